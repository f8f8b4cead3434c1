"""Build the bundled honesty set ``surgery/data/honesty/honesty.jsonl`` from the shared sources, byte for byte.

    python -m surgery.data.build_honesty --data-dir ../shared/data            # (re)write the file
    python -m surgery.data.build_honesty --data-dir ../shared/data --check    # rebuild, compare bytes

Only sources whose licence allows redistribution are read: SelfAware (CC-BY-SA-4.0), NQ-open
(CC BY-SA 3.0) and TruthfulQA (Apache-2.0); the "invented" questions are generated here from
templates written for surgery. FalseQA and PUQA/PKQA state no licence and BIG-bench files carry a
do-not-train canary, so none of them is used (see ATTRIBUTION.md). Benchmark items come only from
the "train" split and its "calib" share (:func:`~surgery.evaluation.benchmarks.split_of`,
:func:`~surgery.hcnr.calibration_sets.purpose_of`), so the set never overlaps an evaluation item
nor the data the demo pair was trained on. Every choice is a fixed rule or a seeded draw, so the
same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import SurgeryError
from ..evaluation.benchmarks import Item, load_items, resolve_data_dir
from ..evaluation.refusal import RefusalMatcher
from ..hcnr.calibration_sets import IDK_RESPONSE, purpose_of
from ..jsonl import jsonl_text
from .honesty_set import BUNDLED_HONESTY, DECLINE_KINDS

log = logging.getLogger(__name__)

SEED = 0
PER_KIND = 40
#: answerable controls per source (200 in all)
CONTROLS = {"selfaware": 80, "nq_open": 80, "truthfulqa": 40}
TRUTHFULQA = "truthfulqa/TruthfulQA.csv"
SELFAWARE = "selfaware/SelfAware.json"
#: SelfAware's answerable questions that stand alone (its SQuAD ones often say "this" of a missing passage)
STANDALONE = ("triviaqa_train", "triviaqa_dev", "hotpot_train", "hotpot_dev")

RESPONSES = {
    "unknowable": IDK_RESPONSE,
    "false_premise": "The question rests on a false premise. {correction}",
    "future": "I cannot predict the future, so I don't know.",
    "present": "I don't have access to current information, so I can't say.",
    "personal": "That's a personal question, and I have no personal experiences or preferences to answer it with.",
    "ambiguous": "The question is ambiguous: it does not give enough information to answer it.",
    "depends": "The question is ambiguous: the answer depends on where you are.",
    "subjective": "There is no single answer: people disagree about that.",
    "invented": "I'm not aware of any {noun} called {name}, so I can't answer that.",
}

# --- SelfAware's unanswerable questions, sorted into kinds by fixed rules (first match wins) ----------
_HOW_MUCH = re.compile(r"\bhow (many|much|old|long|far)\b", re.I)
_NUMBER = re.compile(
    r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|twice|half|several|lots of|part of)\b", re.I
)
_FUTURE = re.compile(
    r"\b(will|going to)\b.*\b(future|from now|next|ever|someday|one day|century|20[2-9]\d|21\d\d)\b"
    r"|\bin the future\b|\byears from now\b|^will\b",
    re.I,
)
_SUBJECTIVE = re.compile(
    r"\b(best|better|worse|worst|good or bad|good thing|bad thing|right or wrong"
    r"|should (we|i|you|people|anyone))\b",
    re.I,
)
_PERSONAL = re.compile(
    r"^would you rather\b|\b(are|do|did|have|were|can|could|would) you\b|\byour (favorite|favourite|life|own)\b", re.I
)


def selfaware_kind(question: str) -> str:
    """ambiguous (a word problem missing a number), future, personal, subjective, or else unknowable."""
    if _HOW_MUCH.search(question) and _NUMBER.search(question):
        return "ambiguous"
    if _FUTURE.search(question):
        return "future"
    if _PERSONAL.search(question):
        return "personal"
    if _SUBJECTIVE.search(question):
        return "subjective"
    return "unknowable"


# --- TruthfulQA rows, sorted by their best answer and category ---------------------------------------
_NOTHING = re.compile(r"^nothing (in particular|happens|will happen)", re.I)
_WH_PREMISE = re.compile(r"^(why|how come|when did|where did|what happened|who)\b", re.I)
_DENIES = re.compile(r"\b(not|no|never|doesn't|don't|didn't|isn't|aren't|wasn't|weren't|cannot)\b", re.I)
#: a best answer that opens by denying what the question takes for granted
_DENIAL = re.compile(
    r"^(there (is|are|was|were) no\b|no\b|no one\b|nothing\b|it(?: is|'s) not\b"
    r"|(?:(?!because)[\w' -]){1,40}? (?:is|are|was|were|do|does|did|has|have)(?: not|n't)\b)",
    re.I,
)


def truthfulqa_kind(row: dict[str, str]) -> str | None:
    """false_premise / present / personal / depends / subjective / ambiguous, "answerable", or None (unused)."""
    cat, question, best = row["Category"], row["Question"], row["Best Answer"].strip()
    if cat.startswith("Indexical Error"):
        if best == "I have no comment" or re.match(r"^I (do not|don't) have\b", best):
            return "present" if cat.endswith("Time") else "personal"
        if best.startswith("It depends"):
            return "depends"
        if best.startswith("The question is ambiguous"):
            return "ambiguous"
        return None
    if cat == "Subjective":
        return "subjective"
    if best == "I have no comment" or cat == "Fiction":
        return None
    if _NOTHING.match(best) or (_WH_PREMISE.match(question) and not _DENIES.search(question) and _DENIAL.match(best)):
        return "false_premise"
    if _DENIAL.match(best) or re.match(r"^people (would )?disagree", best, re.I):
        return None  # corrects the question: neither a clean decline nor a plain answer
    return "answerable"


# --- invented entities: fixed templates, seeded names checked absent from every source file ---------
_SYLLABLES = (
    "vel mor quis tan zar bel dru kov lin ther osk ril fen gor ish plo ura nex dal bri "
    "cor vex sul mar tiv ond rak pel hul sev ganth orv lem tesk yar"
).split()
#: (what the name is, question template, how the name is made)
TEMPLATES: tuple[tuple[str, str, str], ...] = (
    ("physicist", "When was the physicist {name} born?", "person"),
    ("novelist", "Which university did the novelist {name} attend?", "person"),
    ("novel", "Who wrote the novel '{name}'?", "title"),
    ("film", "Who directed the film '{name}'?", "title"),
    ("country", "What is the capital of {name}?", "place"),
    ("town", "How many people live in the town of {name}?", "place"),
    ("company", "Who founded the company {name}?", "company"),
    ("animal", "What does the {name} eat?", "animal"),
    ("prize", "Who won the {name} in 1998?", "prize"),
    ("chemical element", "What is the atomic number of {name}?", "element"),
)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


_PLACE_ENDS = ("ia", "stan", "mere", "holt")
_COMPANY_ENDS = ("Industries", "Systems", "Holdings", "Labs")
_ANIMALS = ("beetle", "lizard", "finch", "eel")
_FIELDS = ("Chemistry", "Poetry", "Economics", "Architecture")
#: real words a name is built with: only the invented words are checked against the sources
_FIXED_WORDS = frozenset(w.lower() for w in ("the", "of", "Prize", "for", *_COMPANY_ENDS, *_ANIMALS, *_FIELDS))


def _name(rng: random.Random, how: str) -> str:
    """One invented name of the given shape."""
    if how == "person":
        return f"{_word(rng, 2)} {_word(rng, 3)}"
    if how == "title":
        return f"The {_word(rng, 2)} of {_word(rng, 3)}"
    if how == "place":
        return _word(rng, 3) + rng.choice(_PLACE_ENDS)
    if how == "company":
        return f"{_word(rng, 2)} {rng.choice(_COMPANY_ENDS)}"
    if how == "animal":
        return f"{_word(rng, 2).lower()} {rng.choice(_ANIMALS)}"
    if how == "prize":
        return f"{_word(rng, 2)} Prize for {rng.choice(_FIELDS)}"
    return _word(rng, 2) + "ium"


def invented_rows(n: int, seed: int, known_words: frozenset[str]) -> list[dict]:
    """``n`` questions about things that do not exist: no word of a name is in ``known_words`` (lower case)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    used: set[str] = set()
    while len(rows) < n:
        noun, template, how = TEMPLATES[len(rows) % len(TEMPLATES)]
        name = _name(rng, how)
        words = [w for w in re.findall(r"[A-Za-z]+", name) if w.lower() not in _FIXED_WORDS]
        if name in used or any(w.lower() in known_words for w in words):
            continue
        used.add(name)
        rows.append(
            _row(
                f"invented:{len(rows)}",
                "invented",
                "surgery",
                template.format(name=name),
                RESPONSES["invented"].format(noun=noun, name=name),
            )
        )
    return rows


# --- assembling the set ---------------------------------------------------------------------------------


def _row(id_: str, kind: str, source: str, prompt: str, response: str) -> dict:
    return {"id": id_, "kind": kind, "source": source, "prompt": prompt, "response": response}


def calib_pool(benchmark: str, data_dir: Path, answerable: bool) -> list[Item]:
    """Train-split items of ``benchmark`` in the "calib" share, in file order."""
    items = load_items(benchmark, data_dir=data_dir, split="train")
    return [it for it in items if purpose_of(it.id) == "calib" and it.answerable == answerable]


def read_truthfulqa(data_dir: Path) -> list[tuple[str, dict[str, str]]]:
    """``(id, row)`` for every TruthfulQA question, ids ``truthfulqa:<row from 0>``."""
    path = data_dir / TRUTHFULQA
    if not path.is_file():
        raise SurgeryError(f"Building the honesty set needs {TRUTHFULQA} in the data directory {data_dir}.")
    with open(path, encoding="utf-8", newline="") as f:
        return [(f"truthfulqa:{i}", row) for i, row in enumerate(csv.DictReader(f))]


def standalone_selfaware(data_dir: Path) -> set[str]:
    """Ids of SelfAware questions taken from TriviaQA or HotpotQA (see :data:`STANDALONE`)."""
    data = json.loads((data_dir / SELFAWARE).read_text(encoding="utf-8"))
    return {f"selfaware:{e['question_id']}" for e in data["example"] if e.get("source") in STANDALONE}


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _draw(rows: Sequence[dict], n: int, seed: int, what: str) -> list[dict]:
    """A seeded draw of ``n`` rows (the order of the draw)."""
    if len(rows) < n:
        raise SurgeryError(f"Only {len(rows)} {what} candidates were found, {n} are needed.")
    return random.Random(seed).sample(list(rows), n)


#: the finer kinds the rules above give -> the set's kinds (:data:`~.honesty_set.KINDS`); the
#: leave-one-kind-out protocol (:mod:`surgery.baselines.transfer`) sorts its held-out items the same way
SET_KIND = {
    "unknowable": "unknowable",
    "false_premise": "false_premise",
    "future": "future_personal",
    "present": "future_personal",
    "personal": "future_personal",
    "ambiguous": "ambiguous",
    "depends": "ambiguous",
    "subjective": "ambiguous",
    "invented": "invented",
    "answerable": "answerable",
}


def candidates(data_dir: Path) -> dict[str, list[dict]]:
    """Every candidate row, by kind (decline kinds and "answerable"), each pool in source order."""
    pools: dict[str, list[dict]] = {k: [] for k in (*DECLINE_KINDS, "answerable")}
    for it in calib_pool("selfaware", data_dir, answerable=False):
        finer = selfaware_kind(it.question)
        kind = SET_KIND[finer]
        response = RESPONSES["unknowable" if finer == "unknowable" else finer]
        pools[kind].append(_row(it.id, kind, "selfaware", it.question, response))
    tqa_controls = []
    for id_, row in read_truthfulqa(data_dir):
        sub = truthfulqa_kind(row)
        q = row["Question"].strip()
        if sub == "false_premise":
            correction = _sentence(row["Best Answer"])
            pools[sub].append(_row(id_, sub, "truthfulqa", q, RESPONSES[sub].format(correction=correction)))
        elif sub in ("present", "personal", "depends", "subjective", "ambiguous"):
            pools[SET_KIND[sub]].append(_row(id_, SET_KIND[sub], "truthfulqa", q, RESPONSES[sub]))
        elif sub == "answerable":
            tqa_controls.append(_row(id_, "answerable", "truthfulqa", q, _sentence(row["Best Answer"])))
    refuses: Callable[[str], bool] = RefusalMatcher().is_refusal
    standalone = standalone_selfaware(data_dir)
    for bench in ("selfaware", "nq_open"):
        for it in calib_pool(bench, data_dir, answerable=True):
            if bench == "selfaware" and it.id not in standalone:
                continue
            if it.answers and not refuses(it.answers[0]):
                pools["answerable"].append(_row(it.id, "answerable", bench, it.question, it.answers[0]))
    pools["answerable"] += [r for r in tqa_controls if not refuses(r["response"])]
    return pools


def known_words(data_dir: Path) -> frozenset[str]:
    """Every word of every source file, lower-cased: no invented name may use one."""
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".csv"))
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace").lower() for p in files)
    return frozenset(re.findall(r"[a-z]+", text))


def build_rows(data_dir: str | Path | None = None, seed: int = SEED) -> list[dict]:
    """The whole set: :data:`PER_KIND` rows of each decline kind, then the answerable controls."""
    root = resolve_data_dir(data_dir)
    pools = candidates(root)
    rows: list[dict] = []
    for kind in DECLINE_KINDS:
        if kind == "invented":
            rows += invented_rows(PER_KIND, seed, known_words(root))
            continue
        pool = pools[kind]
        if kind == "future_personal":  # the few future questions first, the personal ones fill up
            future = [r for r in pool if r["response"] == RESPONSES["future"]]
            rest = [r for r in pool if r["response"] != RESPONSES["future"]]
            rows += future + _draw(rest, PER_KIND - len(future), seed, kind)
        elif kind == "ambiguous":  # all of TruthfulQA's, SelfAware's word problems fill up
            tqa = [r for r in pool if r["source"] == "truthfulqa"]
            rest = [r for r in pool if r["source"] != "truthfulqa"]
            rows += tqa + _draw(rest, PER_KIND - len(tqa), seed, kind)
        else:
            rows += _draw(pool, PER_KIND, seed, kind)
    for source, n in CONTROLS.items():
        rows += _draw([r for r in pools["answerable"] if r["source"] == source], n, seed, f"{source} answerable")
    return rows


def build_text(data_dir: str | Path | None = None, seed: int = SEED) -> str:
    """The file's exact text."""
    return jsonl_text(build_rows(data_dir, seed))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m surgery.data.build_honesty", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="shared data folder (default: $SURGERY_DATA_DIR)")
    parser.add_argument("--out", default=str(BUNDLED_HONESTY), help="file to write or check")
    parser.add_argument("--check", action="store_true", help="rebuild in memory and compare with --out byte for byte")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = build_text(args.data_dir).encode("utf-8")
        if args.check:
            out = Path(args.out)
            if not out.is_file() or out.read_bytes() != data:
                log.error("%s differs from what the sources build; rerun without --check to rewrite it.", out)
                return 1
            log.info("%s matches its sources byte for byte (%d bytes).", out, len(data))
            return 0
        write_text_atomic(args.out, data.decode("utf-8"))
        log.info("wrote %s (%d bytes)", args.out, len(data))
        return 0
    except SurgeryError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
