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
"""

from __future__ import annotations

from dataclasses import Field, field
from typing import Any


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
    }
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a multi-valued option default")
    return field(default=default, metadata=meta)


def flag_of(f: Field[Any]) -> str:
    """The long option name of a field (``--r-iw`` for ``r_iw``)."""
    return str(f.metadata.get("flag") or "--" + f.name.replace("_", "-"))
