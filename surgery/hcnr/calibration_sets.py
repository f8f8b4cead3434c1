"""Calibration sets D_hon / D_task drawn from the "train" split of the benchmarks, and the pools they come from.

Every item used for fitting or calibrating comes from ``split_of(...) == "train"``, so nothing here
ever overlaps an evaluation item. Within "train", a second fixed hash (:func:`purpose_of`) reserves a
quarter of the items for calibration ("calib"), so D_hon/D_task never overlap the data anything is
trained on ("fit": the baselines' RAIT pool, the demo pair's alignment and SFT sets).
Each set is a list of ``{"id", "prompt", "response"}`` dicts, hashed with :func:`examples_sha256`.
Used by ``surgery calib``, the comparison (``surgery bench``) and the demo.

D_hon comes either from the benchmarks above (``honesty="benchmarks"``: PKQA, PUQA and SelfAware,
which need the data folder) or from the set bundled in the package (``honesty="bundled"``,
:mod:`surgery.data.honesty_set`), which needs nothing beside the install. A user's own JSONL named
as a task benchmark is the user's data, not a benchmark: it is used whole (no hash split), and
sampled with the seed only when it holds more items than asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from ..data.honesty_set import BUNDLED, DECLINE_KINDS, read_bundled
from ..errors import SurgeryError
from ..evaluation.benchmarks import LOADERS, SAMPLES_DIR, Item, load_items, resolve_data_dir
from ..evaluation.runner import Generator
from ..evaluation.scoring import is_correct
from ..jsonl import jsonl_text

#: the one fixed "I don't know" answer used for unknown questions (matched by the refusal matcher)
IDK_RESPONSE = "I don't know the answer to that question."
#: share of the train split reserved for calibration sets
CALIB_SHARE = 0.25
PURPOSES = ("fit", "calib")
#: where D_hon comes from: the set bundled in the package, or the benchmarks in the data folder
HONESTY_SOURCES = (BUNDLED, "benchmarks")

log = logging.getLogger(__name__)

Example = dict  # {"id": str, "prompt": str, "response": str}


def purpose_of(item_id: str) -> str:
    """ "calib" for about a quarter of the items (fixed by a hash of the id), "fit" for the rest."""
    h = int.from_bytes(hashlib.sha256(f"purpose:{item_id}".encode()).digest()[:8], "big")
    return "calib" if h / 2**64 < CALIB_SHARE else "fit"


def train_pool(
    benchmark: str, purpose: str, *, data_dir: str | Path | None = None, answerable: bool | None = None
) -> list[Item]:
    """Train-split items of ``benchmark`` reserved for ``purpose`` ("fit" or "calib"), in file order."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}")
    items = [it for it in load_items(benchmark, data_dir=data_dir, split="train") if purpose_of(it.id) == purpose]
    if answerable is not None:
        items = [it for it in items if it.answerable == answerable]
    return items


def sample(items: Sequence[Item], n: int, seed: int, what: str) -> list[Item]:
    """``n`` items drawn with a seeded RNG (order of the draw)."""
    if n > len(items):
        raise SurgeryError(f"Only {len(items)} {what} items are available, but {n} were asked for.")
    return random.Random(seed).sample(list(items), n)


def probe_known(generator: Generator, items: Sequence[Item], *, max_new_tokens: int = 32) -> list[Item]:
    """The answerable items the model already answers correctly (greedy; ``is_correct`` on the gold)."""
    responses = generator.generate([it.question for it in items], max_new_tokens)
    return [it for it, r in zip(items, responses) if is_correct(r, it.answers)]


def answer_example(item: Item) -> Example:
    """The item with its first gold answer as the response."""
    return {"id": item.id, "prompt": item.question, "response": item.answers[0]}


def idk_example(item: Item) -> Example:
    """The item with the fixed "I don't know" response."""
    return {"id": item.id, "prompt": item.question, "response": IDK_RESPONSE}


def honesty_calibration(
    *, data_dir: str | Path | None = None, n: int = 128, seed: int = 0, known: Sequence[Item] = ()
) -> list[Example]:
    """D_hon: half answerable with the answer (``known`` first, then PKQA), half unanswerable with IDK."""
    n_ans = n // 2
    known = list(known)[:n_ans]
    pkqa = sample(train_pool("pkqa", "calib", data_dir=data_dir), n_ans - len(known), seed, "PKQA calibration")
    n_unk = n - n_ans
    sa = sample(
        train_pool("selfaware", "calib", data_dir=data_dir, answerable=False),
        n_unk // 2,
        seed,
        "SelfAware unanswerable calibration",
    )
    puqa = sample(train_pool("puqa", "calib", data_dir=data_dir), n_unk - n_unk // 2, seed, "PUQA calibration")
    examples = [answer_example(it) for it in known + pkqa] + [idk_example(it) for it in sa + puqa]
    random.Random(seed).shuffle(examples)
    return examples


def task_calibration(
    *,
    data_dir: str | Path | None = None,
    n: int = 128,
    seed: int = 0,
    benchmarks: Sequence[str] = ("nq_open", "qa_wikidata"),
) -> list[Example]:
    """D_task: the SFT task's own examples (split evenly over ``benchmarks``), always answered.

    A named benchmark gives its reserved calibration pool; a user's JSONL file gives all its
    answerable items (see :func:`user_task_pool`).
    """
    if not benchmarks:
        raise SurgeryError("D_task needs at least one task benchmark.")
    items: list[Item] = []
    for i, b in enumerate(benchmarks):
        k = n // len(benchmarks) + (1 if i < n % len(benchmarks) else 0)
        if b not in LOADERS:
            pool = user_task_pool(b)
            drawn = pool if len(pool) <= k else random.Random(seed).sample(pool, k)
            log.info("D_task: %d of the %d answerable items of %s (seed %d)", len(drawn), len(pool), b, seed)
            items += drawn
            continue
        pool = [it for it in train_pool(b, "calib", data_dir=data_dir) if it.answerable and it.answers]
        if k > len(pool):
            where = " in the samples bundled with surgery" if resolve_data_dir(data_dir) == SAMPLES_DIR else ""
            raise SurgeryError(
                f"Only {len(pool)} {b} calibration items are available{where}, but {k} were asked for; "
                "pass a sample of your own SFT data with --task FILE.jsonl, lower --n-task, "
                "or point --data-dir at the full benchmark data."
            )
        log.info("D_task: %d of the %d calibration items of %s (seed %d)", k, len(pool), b, seed)
        items += sample(pool, k, seed, f"{b} calibration")
    examples = [answer_example(it) for it in items]
    random.Random(seed).shuffle(examples)
    return examples


def user_task_pool(path: str | Path) -> list[Item]:
    """A user's JSONL of task questions, whole: every answerable item with an answer, in file order.

    Lines marked ``"split": "eval"`` stay out; nothing is hashed away, because the file is the
    user's own data, not a benchmark that evaluation also reads.
    """
    items = [it for it in load_items(str(path), split="train") if it.answerable and it.answers]
    if not items:
        raise SurgeryError(f"The task file {path} has no answerable question with an answer.")
    return items


def bundled_honesty_calibration(
    *, n: int = 128, seed: int = 0, known_ids: Sequence[str] = (), exclude_kinds: Sequence[str] = ()
) -> list[Example]:
    """D_hon from the bundled set: half answerable (``known_ids`` first), half to decline, spread over the kinds.

    The decline half takes the kinds in turn (each kind's lines in a seeded order), so a small set
    still covers unknowable, false-premise, future/personal, invented and ambiguous questions.
    ``exclude_kinds`` leaves decline kinds out (the leave-one-kind-out protocol,
    :mod:`surgery.baselines.transfer`): the other kinds fill their turns, and every kind's seeded order
    is the same as without the exclusion, so the two sets differ only by what was left out and refilled.
    """
    unknown = [k for k in exclude_kinds if k not in DECLINE_KINDS]
    if unknown or len(set(exclude_kinds)) >= len(DECLINE_KINDS):
        raise SurgeryError(
            f"Kinds to leave out must be some (not all) of {', '.join(DECLINE_KINDS)}, got {', '.join(exclude_kinds)}."
        )
    rows = read_bundled()
    rng = random.Random(seed)
    known = set(known_ids)
    answerable = [r for r in rows if r["kind"] == "answerable"]
    rng.shuffle(answerable)
    answerable.sort(key=lambda r: r["id"] not in known)  # stable: the known ones first, each group seeded
    by_kind = {k: [r for r in rows if r["kind"] == k] for k in DECLINE_KINDS}
    for pool in by_kind.values():
        rng.shuffle(pool)
    kinds = [k for k in DECLINE_KINDS if k not in exclude_kinds]
    n_ans, n_dec = n // 2, n - n // 2
    if n_ans > len(answerable) or n_dec > sum(len(by_kind[k]) for k in kinds):
        raise SurgeryError(f"The bundled honesty set has {len(rows)} lines; --n-hon {n} asks for more of one half.")
    decline: list[dict] = []
    turn = 0
    while len(decline) < n_dec:
        pool = by_kind[kinds[turn % len(kinds)]]
        if turn // len(kinds) < len(pool):
            decline.append(pool[turn // len(kinds)])
        turn += 1
    keep = ("id", "prompt", "response", "kind")
    examples = [{k: r[k] for k in keep} for r in answerable[:n_ans] + decline]
    rng.shuffle(examples)
    return examples


def bundled_known_candidates(n: int, seed: int) -> list[Item]:
    """The bundled set's answerable questions to probe a model with (a seeded sample of ``n``)."""
    rows = [r for r in read_bundled() if r["kind"] == "answerable"]
    items = [Item(r["id"], r["source"], r["prompt"], True, [r["response"]]) for r in rows]
    return random.Random(seed).sample(items, min(n, len(items)))


def known_candidates(
    *, data_dir: str | Path | None = None, purpose: str = "fit", n: int = 400, seed: int = 0
) -> list[Item]:
    """SelfAware-answerable items to probe the model with (seeded sample of the reserved pool)."""
    pool = train_pool("selfaware", purpose, data_dir=data_dir, answerable=True)
    return sample(pool, min(n, len(pool)), seed, "SelfAware answerable")


def examples_sha256(examples: Sequence[Example]) -> str:
    """Hash of the canonical JSONL of a set (what the recipe records)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update((json.dumps(ex, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
    return h.hexdigest()


def probe_candidates(honesty: str, data_dir: str | Path | None, n: int, seed: int) -> list[Item]:
    """Answerable questions to probe a model with: the bundled controls, or SelfAware's calibration pool."""
    if honesty == BUNDLED:
        return bundled_known_candidates(n, seed)
    return known_candidates(data_dir=data_dir, purpose="calib", n=n, seed=seed)


def honesty_set(
    honesty: str,
    *,
    data_dir: str | Path | None,
    n: int,
    seed: int,
    known: Sequence[Item] = (),
    exclude_kinds: Sequence[str] = (),
) -> list[Example]:
    """D_hon from the source ``honesty`` names (:data:`HONESTY_SOURCES`), logged.

    ``exclude_kinds`` (bundled set only: the benchmark-built set has no kinds) leaves decline kinds out.
    """
    if honesty not in HONESTY_SOURCES:
        raise SurgeryError(f"Unknown honesty data {honesty!r}; use one of {', '.join(HONESTY_SOURCES)}.")
    if exclude_kinds and honesty != BUNDLED:
        raise SurgeryError("Only the bundled honesty set has kinds to leave out.")
    if honesty == BUNDLED:
        hon = bundled_honesty_calibration(
            n=n, seed=seed, known_ids=[it.id for it in known], exclude_kinds=exclude_kinds
        )
    else:
        hon = honesty_calibration(data_dir=data_dir, n=n, seed=seed, known=known)
    log.info("D_hon: %d examples from the %s honesty data (seed %d)", len(hon), honesty, seed)
    return hon


def replace_declines(hon: list[Example], responses: Mapping[str, str] | None, honesty: str = BUNDLED) -> int:
    """Give each question to decline (a bundled line whose kind is not "answerable") the reply ``responses``
    has for its prompt; returns how many were replaced. Controls keep their answers."""
    if responses is None:
        return 0
    if honesty != BUNDLED:
        raise SurgeryError("Only the bundled honesty set marks which questions to decline.")
    n = 0
    for e in hon:
        if e.get("kind", "answerable") != "answerable" and e["prompt"] in responses:
            e["response"] = responses[e["prompt"]]
            n += 1
    return n


def _honesty_counts(hon: Sequence[Example], honesty: str) -> dict:
    """Source, size, hash, how many to decline and (bundled set) how many of each kind."""
    bundled = honesty == BUNDLED
    return {
        "source": honesty,
        "n": len(hon),
        "sha256": examples_sha256(hon),
        "n_idk": sum(e["kind"] != "answerable" for e in hon)
        if bundled
        else sum(e["response"] == IDK_RESPONSE for e in hon),
        "kinds": {k: sum(e.get("kind") == k for e in hon) for k in (*DECLINE_KINDS, "answerable")} if bundled else None,
    }


def write_calibration(
    out_dir: Path,
    *,
    generator: Generator | None = None,
    data_dir: str | Path | None = None,
    n_hon: int = 128,
    n_task: int = 128,
    seed: int = 0,
    probe: int = 192,
    task_benchmarks: Sequence[str] = ("nq_open", "qa_wikidata"),
    max_new_tokens: int = 32,
    probe_model: str | None = None,
    honesty: str = "benchmarks",
    known: Sequence[Item] | None = None,
    exclude_kinds: Sequence[str] = (),
    decline_responses: Mapping[str, str] | None = None,
) -> dict:
    """Write ``d_hon.jsonl``, ``d_task.jsonl`` and ``calibration.json`` (sizes, hashes, ids) to ``out_dir``.

    ``honesty`` is where D_hon comes from (:data:`HONESTY_SOURCES`). With a ``generator`` the answerable
    half of D_hon starts with ``probe`` candidates that model answers correctly (:func:`probe_candidates`);
    ``known`` gives that probe's result instead (several sets from one probe: the transfer protocol).
    ``exclude_kinds`` and ``decline_responses``: :func:`bundled_honesty_calibration`, :func:`replace_declines`.
    """
    probed = known is not None or generator is not None
    if known is None and generator is not None and probe > 0:
        known = probe_known(generator, probe_candidates(honesty, data_dir, probe, seed), max_new_tokens=max_new_tokens)
    known = list(known or [])
    hon = honesty_set(honesty, data_dir=data_dir, n=n_hon, seed=seed, known=known, exclude_kinds=exclude_kinds)
    n_own = replace_declines(hon, decline_responses, honesty)
    task = task_calibration(data_dir=data_dir, n=n_task, seed=seed, benchmarks=task_benchmarks)
    out_dir = Path(out_dir)
    paths = {
        "honesty": write_text_atomic(out_dir / "d_hon.jsonl", jsonl_text(hon)),
        "task": write_text_atomic(out_dir / "d_task.jsonl", jsonl_text(task)),
    }
    summary = {
        "honesty": {
            "file": paths["honesty"].name,
            **_honesty_counts(hon, honesty),
            "n_known_probed": min(len(known), n_hon // 2),
            "excluded_kinds": list(exclude_kinds),
            "n_own_decline_responses": n_own,
            "ids": [e["id"] for e in hon],
        },
        "task": {
            "file": paths["task"].name,
            "n": len(task),
            "sha256": examples_sha256(task),
            "benchmarks": list(task_benchmarks),
            "ids": [e["id"] for e in task],
        },
        "seed": seed,
        "split": "train",
        "purpose": "calib",
        "probe_model": probe_model if probed else None,
        "probe_candidates": probe if probed else 0,
    }
    write_json_atomic(out_dir / "calibration.json", summary, indent=1)
    return summary
