"""Is an answer correct? SQuAD-style normalisation, then a whole-word alias match.

Small chat models answer in sentences ("The capital is Paris."), so an answer counts as correct when
any normalised gold alias appears as a whole-word run inside the normalised response.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "‘’“”–—…"})


def normalize_answer(s: str) -> str:
    """Lower-case, strip accents, punctuation and articles, collapse whitespace."""
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c)).lower()
    s = s.translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def is_correct(response: str, answers: Iterable[str]) -> bool:
    """True when some gold alias (normalised, non-empty) occurs as whole words in the response."""
    text = f" {normalize_answer(response)} "
    for a in answers:
        gold = normalize_answer(a)
        if gold and f" {gold} " in text:
            return True
    return False
