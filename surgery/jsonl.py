"""The one JSONL reader: every data file the tool reads line by line goes through here.

A user's file can be non-UTF-8, hold a blank line, a broken line or something that is not a JSON
object; each of these is one sentence naming the file and line, never a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CalibrationDataError, SurgeryError


def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    what: str = "JSONL file",
    error: type[SurgeryError] = CalibrationDataError,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of ``path``.

    ``what`` names the file's role in error messages ("honesty calibration file"), because users
    pass several JSONL files to one command and must know which one is wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"The {what} {p} does not exist or is not a file.")
    try:
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except RecursionError:
                    raise error(f"{p}:{n}: the {what} has a line nested too deeply to read.") from None
                except json.JSONDecodeError as exc:
                    raise error(f"{p}:{n}: the {what} has a line that is not JSON ({exc.msg}).") from None
                if not isinstance(row, dict):
                    raise error(f"{p}:{n}: each line of the {what} must be a JSON object.")
                yield n, row
    except UnicodeDecodeError:
        raise error(f"The {what} {p} is not UTF-8 text.") from None
    except OSError as exc:
        raise error(f"Could not read the {what} {p}: {exc.strerror or exc}.") from None


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    what: str = "JSONL file",
    error: type[SurgeryError] = CalibrationDataError,
) -> list[dict[str, Any]]:
    """All objects of a JSONL file (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, what=what, error=error)]


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    """Rows as JSONL text (one compact object a line, UTF-8 kept readable)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
