"""The bundled honesty calibration set: where it lives and how ``--honesty-data`` names it.

The set (``surgery/data/honesty/honesty.jsonl``) ships with the package so that ``surgery calib`` and
``surgery patch`` work on a fresh install, without the benchmark data folder. Its lines are the
calibration JSONL every command reads (``prompt``, ``response``) plus ``id``, ``kind`` and ``source``;
``kind`` is one of :data:`KINDS`. How it was built: ``surgery/data/honesty/ATTRIBUTION.md``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CalibrationDataError
from ..jsonl import read_jsonl

HONESTY_DIR = Path(__file__).resolve().parent / "honesty"
BUNDLED_HONESTY = HONESTY_DIR / "honesty.jsonl"
#: the value of ``--honesty-data`` that names the bundled file
BUNDLED = "bundled"
#: what the model should decline, in the file's order; "answerable" items are the controls
DECLINE_KINDS = ("unknowable", "false_premise", "future_personal", "invented", "ambiguous")
KINDS = (*DECLINE_KINDS, "answerable")


def resolve_honesty_data(spec: str | Path) -> Path:
    """``bundled`` -> the packaged file; anything else is the user's own file, used as given."""
    if str(spec) == BUNDLED:
        if not BUNDLED_HONESTY.is_file():
            raise CalibrationDataError(
                f"The bundled honesty set {BUNDLED_HONESTY} is missing from this installation; "
                "reinstall surgery or pass --honesty-data FILE."
            )
        return BUNDLED_HONESTY
    return Path(spec)


def read_bundled(path: str | Path = BUNDLED_HONESTY) -> list[dict]:
    """The bundled set's rows, each checked to carry a known ``kind`` (one sentence if not)."""
    rows = read_jsonl(path, what="bundled honesty set")
    for n, row in enumerate(rows, 1):
        if row.get("kind") not in KINDS or not isinstance(row.get("prompt"), str):
            raise CalibrationDataError(f"Line {n} of {path} has no known 'kind' or no 'prompt'.")
    return rows
