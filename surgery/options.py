"""Option fields for the options dataclasses: help text and choices travel with the field.

Pure metadata, no CLI library: the library's options objects (such as ``PatchOptions``) are declared
with :func:`opt`, and ``surgery.commands.options`` turns them into click options. Field metadata:

``help``      one sentence for ``--help``
``choices``   allowed string values
``flag``      the long flag, when it is not ``--field-name``
``short``     a one-letter alias such as ``-o``
``multiple``  repeatable option; the field holds a tuple
``metavar``   what ``--help`` shows for the value
``aliases``   old spellings accepted but hidden from ``--help``
``cli``       False to leave a field out of the CLI (set by the command itself)
``low``       smallest allowed value of a number (inclusive); ``above`` the exclusive bound
``high``      largest allowed value of a number (inclusive)

Every number field is checked by :func:`check_numbers` (finite, within its bounds), so a bad value is
refused with one sentence naming the flag before any work, whichever command declares the field.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import Field, field
from typing import Any

from .errors import OptionError

log = logging.getLogger(__name__)


def opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    short: str | None = None,
    multiple: bool = False,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    low: float | None = None,
    above: float | None = None,
    high: float | None = None,
) -> Any:
    """A dataclass field with the metadata :func:`add_options` reads (see the module docstring)."""
    meta = {
        "help": help,
        "choices": choices,
        "flag": flag,
        "short": short,
        "multiple": multiple,
        "metavar": metavar,
        "aliases": aliases,
        "cli": cli,
        "low": low,
        "above": above,
        "high": high,
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a multi-valued option default")
    return field(default=default, metadata=meta)


def flag_of(f: Field[Any]) -> str:
    """The long option name of a field (``--r-iw`` for ``r_iw``)."""
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))


def _number_problem(value: float, meta: Any) -> str | None:
    """Why ``value`` is not allowed for a field with metadata ``meta`` (None when it is)."""
    if not math.isfinite(value):
        return "must be a finite number"
    low, above, high = meta.get("low"), meta.get("above"), meta.get("high")
    if low is not None and value < low:
        return f"must be at least {low:g}"
    if above is not None and value <= above:
        return f"must be greater than {above:g}"
    if high is not None and value > high:
        return f"must be at most {high:g}"
    return None


def check_numbers(options: Any) -> None:
    """Refuse a non-finite or out-of-range number in any field of the options dataclass ``options``.

    One generic check, so that every command refuses ``nan``/``inf`` and impossible sizes the same way
    (NaN compares false with every bound, so a check written as ``if x < 0`` lets it through).
    """
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            problem = _number_problem(float(v), f.metadata)
            if problem:
                raise OptionError(f"{flag_of(f)} {problem}, got {v}.")


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?B)?\s*$", re.IGNORECASE)
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | float, flag: str, *, warn_plain: bool = False) -> int:
    """Bytes from a size as Hugging Face writes it ("5GB", "500MB", "2GiB"); a plain number is GiB.

    A plain number keeps its old meaning (``--max-shard-size 2`` = 2 * 1024**3 bytes), with a warning
    when ``warn_plain`` (the old spelling, accepted for one release). Refuses nan, inf, zero and
    negative sizes, which used to crash or write one shard per tensor.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise OptionError(f"{flag} must be a positive size such as 2 (GB), 500MB or 5GB, got {text!r}.")
    number, unit = float(match.group(1)), match.group(2)
    if unit is None and warn_plain:
        log.warning("%s %s: a plain number is read as GiB; write it with a unit (%sGiB, or 5GB).", flag, text, text)
    size = number * (_UNITS[unit.lower()] if unit else 1024**3)
    if not math.isfinite(size) or size < 1:
        raise OptionError(f"{flag} must be a positive size such as 2 (GB), 500MB or 5GB, got {text!r}.")
    return int(size)
