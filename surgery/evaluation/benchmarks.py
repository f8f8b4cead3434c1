"""Honesty benchmarks as a list of :class:`Item`: one schema for every source and for a user's JSONL.

Each loader reads the raw file as published (see each folder's SOURCE.md in the data dir) and maps it
to ``{id, question, answerable, answers}``. Ids carry their source (``selfaware:17``) so that
:func:`split_of` gives one fixed train/eval split that every consumer shares: calibration, alignment
and SFT data come from "train", evaluation from "eval", and the two never overlap.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CalibrationDataError, SurgeryError
from ..jsonl import read_jsonl

#: share of each benchmark hashed into the "eval" split
EVAL_SHARE = 0.3
DATA_DIR_ENV = "SURGERY_DATA_DIR"
#: the sample files shipped inside the package (used when no data folder is given)
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "samples"
TASK_PREFIX = "Complete the sentence: "
SPLITS = ("train", "eval", "all")
#: bundled sample files are subsets; this field keeps each record's position in the original file (its id)
SOURCE_INDEX = "source_index"


@dataclass
class Item:
    """One question: ``answerable`` False means the honest reply is to decline (unknown, false premise)."""

    id: str
    benchmark: str
    question: str
    answerable: bool
    answers: list[str] = field(default_factory=list)
    kind: str = "honesty"  # "task" for the SFT task benchmark (scored by accuracy only)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Option (``--data-dir``) > ``$SURGERY_DATA_DIR`` > the samples bundled in the package.

    The full data folder is never guessed from where the code is installed: a caller that keeps it
    beside the repository (``../shared/data``) passes it or sets the variable.
    """
    for given, what in ((data_dir, "--data-dir"), (os.environ.get(DATA_DIR_ENV), f"${DATA_DIR_ENV}")):
        if given:
            p = Path(given).expanduser()
            if not p.is_dir():
                raise SurgeryError(f"The data directory {p} (from {what}) does not exist.")
            return p
    return SAMPLES_DIR


def split_of(benchmark: str, item_id: str) -> str:
    """ "train" or "eval" for an item, fixed forever by a hash of its id (about 30% "eval").

    FalseQA ships its own split, so its test file is "eval" and its train/valid files are "train".
    """
    if benchmark == "falseqa" or item_id.startswith("falseqa:"):
        return "eval" if item_id.split(":", 1)[-1].startswith("test-") else "train"
    key = item_id if ":" in item_id else f"{benchmark}:{item_id}"
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "eval" if h / 2**64 < EVAL_SHARE else "train"


# --- loaders: data dir -> items (all splits); each names the files it needs ---------------------------


#: where each unbundled data folder comes from (named in the error when it is missing)
UPSTREAM = {
    "alignment_for_honesty": "the folder data/evaluation_data/ of github.com/GAIR-NLP/alignment-for-honesty",
    "falseqa": "the folder dataset/ of github.com/thunlp/FalseQA",
    "selfaware": "data/SelfAware.json of github.com/yinzhangyue/SelfAware",
    "nq_open": "the folder nq_open/ of github.com/google-research-datasets/natural-questions",
    "bigbench": "bigbench/benchmark_tasks/ of the PyPI sdist bigbench==1.0.0 (pip download --no-deps bigbench==1.0.0)",
}


def _need(root: Path, rel: str, benchmark: str) -> Path:
    p = root / rel
    if p.is_file():
        return p
    if root == SAMPLES_DIR:
        source = UPSTREAM.get(rel.split("/", 1)[0], "its publisher")
        raise SurgeryError(
            f"Benchmark '{benchmark}' is not bundled with surgery (no redistribution licence): download {rel} "
            f"from {source}, keep the path {rel} inside a folder, and pass --data-dir FOLDER (or set "
            f"${DATA_DIR_ENV}); `surgery calib` and `surgery patch` need no benchmark with their default, "
            "bundled honesty data."
        )
    raise SurgeryError(f"Benchmark '{benchmark}' needs {rel}, which is not in the data directory {root}.")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SurgeryError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path, what="benchmark file", error=CalibrationDataError)


def _as_list(x) -> list[str]:
    if x is None:
        return []
    if isinstance(x, (str, int, float)):
        return [str(x)]
    return [str(a) for a in x]


def load_selfaware(root: Path) -> list[Item]:
    data = _read_json(_need(root, "selfaware/SelfAware.json", "selfaware"))
    return [
        Item(
            f"selfaware:{e['question_id']}",
            "selfaware",
            e["question"],
            bool(e["answerable"]),
            _as_list(e.get("answer")) if e["answerable"] else [],
        )
        for e in data["example"]
    ]


def load_falseqa(root: Path) -> list[Item]:
    """False premise (label 1) -> unanswerable as asked; true premise (label 0) -> answerable."""
    items = []
    for part in ("train", "valid", "test"):
        path = root / "falseqa" / f"{part}.csv"
        if part == "test":
            path = _need(root, "falseqa/test.csv", "falseqa")
        elif not path.is_file():
            continue
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                false_premise = row["label"].strip() == "1"
                try:
                    refs = _as_list(ast.literal_eval(row["answer"]))
                except (ValueError, SyntaxError, TypeError):
                    refs = [row["answer"]]
                items.append(
                    Item(
                        f"falseqa:{part}-{i}",
                        "falseqa",
                        row["question"].strip(),
                        not false_premise,
                        [] if false_premise else refs,
                    )
                )
    return items


def _puqa(root: Path, benchmark: str) -> list[Item]:
    rows = _read_jsonl(_need(root, "alignment_for_honesty/puqa.jsonl", benchmark))
    return [Item(f"puqa:{i}", benchmark, r["question"], False, []) for i, r in enumerate(rows)]


def _pkqa(root: Path, benchmark: str) -> list[Item]:
    rows = _read_jsonl(_need(root, "alignment_for_honesty/pkqa_13b.jsonl", benchmark))
    items = []
    for i, r in enumerate(rows):
        answer = str(r["answer"]).strip()
        if answer.lower().startswith("answer:"):  # some gold answers carry a literal "Answer:" prefix
            answer = answer[len("answer:") :].strip()
        items.append(Item(f"pkqa:{i}", benchmark, r["question"], True, [answer]))
    return items


def load_puqa(root: Path) -> list[Item]:
    return _puqa(root, "puqa")


def load_pkqa(root: Path) -> list[Item]:
    return _pkqa(root, "pkqa")


def load_puqa_pkqa(root: Path) -> list[Item]:
    return _puqa(root, "puqa_pkqa") + _pkqa(root, "puqa_pkqa")


def load_known_unknowns(root: Path) -> list[Item]:
    """BIG-bench known_unknowns: gold "Unknown" -> unanswerable, otherwise the gold answer text."""
    data = _read_json(_need(root, "bigbench/known_unknowns/task.json", "known_unknowns"))
    items = []
    for i, e in enumerate(data["examples"]):
        gold = next(k for k, v in e["target_scores"].items() if v == max(e["target_scores"].values()))
        unknown = gold.strip().lower() == "unknown"
        items.append(Item(f"known_unknowns:{i}", "known_unknowns", e["input"], not unknown, [] if unknown else [gold]))
    return items


def load_nq_open(root: Path) -> list[Item]:
    items = []
    for rel, tag in (("nq_open/NQ-open.dev.jsonl", "dev"), ("nq_open/NQ-open.efficientqa.dev.1.1.jsonl", "eqa")):
        path = _need(root, rel, "nq_open") if tag == "dev" else root / rel
        if not path.is_file():
            continue
        for i, r in enumerate(_read_jsonl(path)):
            i = r.get(SOURCE_INDEX, i)
            items.append(Item(f"nq_open:{tag}-{i}", "nq_open", r["question"], True, _as_list(r["answer"])))
    return items


def load_qa_wikidata(root: Path) -> list[Item]:
    """The SFT task: Wikidata cloze prompts, scored by accuracy (kind "task")."""
    data = _read_json(_need(root, "bigbench/qa_wikidata/task.json", "qa_wikidata"))
    return [
        Item(
            f"qa_wikidata:{e.get(SOURCE_INDEX, i)}",
            "qa_wikidata",
            TASK_PREFIX + e["input"],
            True,
            _as_list(e["target"]),
            kind="task",
        )
        for i, e in enumerate(data["examples"])
    ]


LOADERS: dict[str, Callable[[Path], list[Item]]] = {
    "selfaware": load_selfaware,
    "falseqa": load_falseqa,
    "puqa": load_puqa,
    "pkqa": load_pkqa,
    "puqa_pkqa": load_puqa_pkqa,
    "known_unknowns": load_known_unknowns,
    "nq_open": load_nq_open,
    "qa_wikidata": load_qa_wikidata,
}
BENCHMARKS = tuple(LOADERS)


def _user_rows(path: Path) -> list[tuple[Item, str | None]]:
    """A user's JSONL: ``{"question", "answerable", "answers"?, "id"?, "benchmark"?, "kind"?, "split"?}``."""
    items: list[tuple[Item, str | None]] = []
    for n, row in enumerate(_read_jsonl(path), 1):  # n counts questions (blank lines skipped): ids depend on it
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise SurgeryError(f'Line {n} of {path} has no "question" string.')
        if not isinstance(row.get("answerable"), bool):
            raise SurgeryError(f'Line {n} of {path} needs "answerable": true or false.')
        answers = row.get("answers", [])
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise SurgeryError(f'Line {n} of {path} has "answers" that is not a list of strings.')
        kind = row.get("kind", "honesty")
        if kind not in ("honesty", "task"):
            raise SurgeryError(f'Line {n} of {path} has kind {kind!r}; use "honesty" or "task".')
        bench = str(row.get("benchmark") or path.stem)
        item = Item(str(row.get("id", f"{bench}:{n}")), bench, row["question"], row["answerable"], answers, kind)
        if "split" in row and row["split"] not in ("train", "eval"):
            raise SurgeryError(f'Line {n} of {path} has split {row["split"]!r}; use "train" or "eval".')
        items.append((item, row.get("split")))
    return items


def _balanced_sample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """``limit`` items, half answerable and half not where both exist; nested as ``limit`` grows."""
    order = {id(it): i for i, it in enumerate(items)}
    ans = [it for it in items if it.answerable]
    una = [it for it in items if not it.answerable]
    rng = random.Random(seed)
    rng.shuffle(ans)
    rng.shuffle(una)
    k_a = min(len(ans), (limit + 1) // 2) if una else min(len(ans), limit)
    k_u = min(len(una), limit - k_a)
    k_a = min(len(ans), limit - k_u)
    picked = ans[:k_a] + una[:k_u]
    return sorted(picked, key=lambda it: order[id(it)])


def load_items(
    name_or_path: str,
    *,
    data_dir: str | os.PathLike | None = None,
    split: str = "eval",
    limit: int | None = None,
    seed: int = 0,
) -> list[Item]:
    """Items of a named benchmark (or a user JSONL), in the requested split, optionally sampled.

    A user JSONL is used whole unless its lines carry ``"split"``; built-in benchmarks follow
    :func:`split_of`.
    """
    if split not in SPLITS:
        raise SurgeryError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if limit is not None and limit < 1:
        raise SurgeryError(f"--limit must be at least 1 (got {limit}).")
    name = str(name_or_path)
    if name in LOADERS:
        root = resolve_data_dir(data_dir)
        items = LOADERS[name](root)
        if split != "all":
            items = [it for it in items if split_of(it.benchmark, it.id) == split]
    elif name.endswith((".jsonl", ".json")) or os.sep in name or Path(name).exists():
        path = Path(name).expanduser()
        if not path.is_file():
            raise SurgeryError(f"Benchmark file {path} does not exist.")
        rows = _user_rows(path)
        if not rows:
            raise SurgeryError(f"Benchmark file {path} has no questions.")
        items = [it for it, s in rows if split == "all" or s is None or s == split]
    else:
        raise SurgeryError(f"Unknown benchmark '{name}'; use one of {', '.join(BENCHMARKS)} or a path to a JSONL file.")
    if not items:
        raise SurgeryError(f"Benchmark '{name}' has no items in split '{split}'.")
    if limit is not None and limit < len(items):
        items = _balanced_sample(items, limit, seed)
    return items
