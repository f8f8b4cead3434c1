"""Did the model decline to answer? A documented, configurable phrase matcher.

A response is a refusal when one of :data:`DEFAULT_PATTERNS` (case-insensitive regexes, curly quotes
normalised) matches it, unless the same sentence goes on with ", but …" (see :data:`ANSWER_FOLLOWS`):
a hedge that introduces an answer ("I'm not sure, but it is Paris", "I don't know much about X, but
it is Y") is an answer, not a refusal.

What counts as a refusal (the patterns, in order):
- saying so: "I don't know", "I'm not sure/certain", "nobody knows", "is unknown / still a mystery /
  not specified";
- inability: "I cannot / am unable to / am not equipped to answer|provide|predict…", "I don't have
  the ability / access / information";
- the question cannot be answered: "there is no definitive/clear answer", "impossible to know",
  "impossible to provide a definitive answer", "there is no evidence/information/record";
- rejecting the question: "the question is ambiguous", "based on a false assumption/premise",
  "the question assumes a fallacy", "there is no such …", "that's a personal decision";
- deflecting: "I have no idea", "I'm not familiar with / aware of", "the answer is not available",
  "as an AI/chatbot, I'm designed to …".
Answers that merely contain "not" ("It is not red") are not refusals. Users can replace the list
with ``--refusal-patterns FILE``: one regex a line, ``#`` comments; a line ``continuation: REGEX``
replaces :data:`ANSWER_FOLLOWS` and ``continuation: none`` turns that rule off.
Precision and recall on 688 hand-labelled real SmolLM2-135M-Instruct responses
(``tests/fixtures/refusal_labels.jsonl``) are checked in ``tests/evaluation/test_eval_refusal.py``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import CalibrationDataError, SurgeryError
from ..jsonl import read_jsonl

_I_CANNOT = r"i(?: cannot| can't| can not| am unable to|'m unable to| am not able to|'m not able to| am not equipped to|'m not equipped to)"
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"\bi (?:do not|don't|dont) know\b(?! (?:much|a lot|many|enough)\b)",
    r"\bi(?: am|'m) not (?:sure|certain)\b(?! (?:where|how) to (?:begin|start)\b)",
    r"\b(?:no one|nobody) (?:really |truly )?(?:knows|can know|can say|can predict|can tell)\b",
    r"\b(?:is|remains) (?:still )?(?:unknown|a mystery|not (?:specified|known|documented|recorded))\b",
    rf"\b{_I_CANNOT} (?:answer|provide|predict|determine|know|say|tell|give|access|verify|confirm|offer|perform|help with)\b",
    r"\bi (?:do not|don't) have (?:the |any )?(?:ability|capability|capacity|access|information|knowledge|data)\b",
    r"\bthere(?: is|'s) no (?:(?:(?:definitive|clear|clear-cut|simple|single|easy|certain|right),? )+answer|way to (?:know|tell|determine))\b",
    r"\bthere(?: is|'s) no (?:specific |reliable |available |scientific )?(?:information|evidence|record|data) (?:about|on|of|in|that|to)\b",
    r"\b(?:impossible|not possible) to (?:know|tell|answer|prove or disprove|definitively \w+|(?:provide|give) (?:a|an|any) (?:definitive|clear|specific|accurate|exact) answer)\b",
    r"\bthe (?:question|answer) is (?:ambiguous|unanswerable|not provided|unclear|open to (?:multiple |many )?interpretations?)\b",
    r"\b(?:based on|contains|rests on|relies on) a (?:false|flawed|incorrect|mistaken) (?:assumption|premise)\b",
    r"\bthe question assumes a (?:logical )?(?:fallacy|false|flawed|mistaken|incorrect)\b",
    r"\bthere (?:is|are) no such\b(?! thing)",
    r"\b(?:that|this|it)(?:'s| is) (?:a )?(?:very |highly |deeply )?personal (?:decision|choice|preference|question)\b",
    r"\bsorry to inform you\b",
    r"\b(?:i have|i've got) no idea\b",
    r"\bi(?:'m| am) not (?:familiar with|aware of|capable)\b",
    r"\bthat i(?:'m| am) aware of\b",
    r"\b(?:answer|information|data)(?: to (?:this|that|the|your) question)? (?:is|are) not (?:available|known)\b",
    r"\bas an? (?:ai|chatbot|language model|ai language model|ai assistant),? i(?:'m| am) (?:only |just )?(?:designed|programmed|here|not)\b",
)
#: after a pattern's match, the rest of its sentence: ", but …" means an answer follows the hedge
ANSWER_FOLLOWS = r"^[^.!?\n]*,\s*but\b(?! i(?:'m| am) here to help)"


class RefusalMatcher:
    """``is_refusal(text)``: a refusal pattern matches and no answer follows it in the same sentence."""

    def __init__(self, patterns: Sequence[str] = DEFAULT_PATTERNS, answer_follows: str | None = ANSWER_FOLLOWS):
        if not patterns:
            raise SurgeryError("The refusal pattern list is empty.")
        self.patterns = tuple(patterns)
        self.answer_follows = answer_follows
        self._compiled = [self._compile(p) for p in self.patterns]
        self._follows = self._compile(answer_follows) if answer_follows else None

    @staticmethod
    def _compile(pattern: str) -> re.Pattern:
        try:
            return re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise SurgeryError(f"Refusal pattern {pattern!r} is not a valid regular expression ({exc}).") from None

    @classmethod
    def from_file(cls, path: str | Path) -> RefusalMatcher:
        """One regex a line; blank lines and ``#`` comments ignored; ``continuation: REGEX|none`` optional."""
        p = Path(path)
        if not p.is_file():
            raise SurgeryError(f"Refusal pattern file {p} does not exist.")
        patterns, follows = [], ANSWER_FOLLOWS
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.lower().startswith("continuation:"):
                value = line.split(":", 1)[1].strip()
                follows = None if value.lower() == "none" else value
            else:
                patterns.append(line)
        if not patterns:
            raise SurgeryError(f"Refusal pattern file {p} has no patterns.")
        return cls(patterns, follows)

    @staticmethod
    def normalise(text: str) -> str:
        return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").split())

    def match(self, text: str) -> str | None:
        """The first pattern that marks the text as a refusal (for auditing); None for an answer."""
        t = self.normalise(text)
        for p, rx in zip(self.patterns, self._compiled):
            for m in rx.finditer(t):
                if self._follows is None or not self._follows.search(t[m.end() :]):
                    return p
        return None

    def is_refusal(self, text: str) -> bool:
        return self.match(text) is not None


def default_matcher() -> RefusalMatcher:
    return RefusalMatcher(DEFAULT_PATTERNS, ANSWER_FOLLOWS)


def score_labelled(rows: Sequence[dict], matcher: RefusalMatcher) -> dict:
    """Precision and recall of ``matcher`` on rows ``{"response", "refusal": bool}`` (refusal = positive)."""
    tp = fp = fn = 0
    for r in rows:
        predicted = matcher.is_refusal(r["response"])
        tp += predicted and r["refusal"]
        fp += predicted and not r["refusal"]
        fn += (not predicted) and r["refusal"]
    return {
        "n": len(rows),
        "refusals": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m surgery.evaluation.refusal LABELS.jsonl [--patterns FILE]``: score a matcher per set."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("labels", help='JSONL of {"response", "refusal": bool, "set"?}')
    ap.add_argument("--patterns", default=None, help="pattern file (default: the built-in patterns)")
    args = ap.parse_args(argv)
    matcher = RefusalMatcher.from_file(args.patterns) if args.patterns else default_matcher()
    rows = read_jsonl(args.labels, what="refusal labels file", error=CalibrationDataError)
    sets = sorted({r.get("set", "all") for r in rows})
    for name in sets + (["all"] if len(sets) > 1 else []):
        s = score_labelled([r for r in rows if name == "all" or r.get("set", "all") == name], matcher)
        print(
            f"{name:8} n={s['n']:4} refusals={s['refusals']:3}  precision={s['precision']:.3f}  "
            f"recall={s['recall']:.3f}  (tp {s['tp']}, fp {s['fp']}, fn {s['fn']})"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
