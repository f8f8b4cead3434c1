"""Where a command may write: never over or inside one of its own inputs, and only where it can.

Every command that writes compares its output paths with all its input paths here, before any work,
so that ``patch -o sft/model.safetensors`` or ``apply -o sft/`` is refused with one sentence instead of
overwriting the model it reads; and an output location that cannot be written is reported as one
sentence up front instead of an ``OSError`` traceback after minutes of work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OptionError

PathLike = str | os.PathLike


def _real(path: PathLike) -> Path:
    """The absolute path with every symlink resolved (also for parts that do not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def refuse_input_overlap(
    output: PathLike, inputs: Iterable[PathLike | None], *, flag: str = "-o", folder: bool = False
) -> None:
    """Refuse an output that would write over or inside an input.

    ``folder``: the output is a folder written whole (``apply``): it may not equal, lie inside or
    contain an input. Otherwise the output is one file (``patch``): it may not be an input file nor an
    existing file inside an input folder (the SFT's ``model.safetensors``, say).
    """
    out = _real(output)
    for given in inputs:
        if given is None or not os.path.lexists(os.fspath(given)):
            continue  # a hub id or an absent file is no path the output can collide with
        src = _real(given)
        if folder:
            clash = _within(out, src) or _within(src, out)
        else:
            clash = out == src or (src.is_dir() and _within(out, src) and out.exists())
        if clash:
            raise OptionError(f"{flag} {output} would write over or inside the input {given}; choose another path.")


def refuse_unwritable(output: PathLike | None, *, flag: str, folder: bool = False) -> None:
    """Refuse an output whose location cannot be written: its nearest existing ancestor must be a
    writable folder (missing parent folders are created by the writers, as for ``--json``)."""
    if output is None or os.fspath(output) == "-":  # "-": stdout (``--json -``)
        return
    path = _real(output)
    if path.is_dir() and not folder:
        raise OptionError(f"{flag} {output} is a folder; give a file name.")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OptionError(f"{flag} {output}: {parent} is a file, not a folder, so nothing can be written there.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OptionError(f"{flag} {output}: the folder {parent} is not writable.")


def check_outputs(
    inputs: Iterable[PathLike | None],
    files: Iterable[tuple[str, PathLike | None]] = (),
    folders: Iterable[tuple[str, PathLike | None]] = (),
) -> None:
    """Every output of one command, as ``(flag, path)`` pairs (None: not asked for), checked before any
    work against all of that command's ``inputs``: writable, and neither over nor inside an input."""
    inputs = tuple(inputs)
    for outputs, folder in ((files, False), (folders, True)):
        for flag, path in outputs:
            if path is None or os.fspath(path) in ("", "-"):  # not asked for, or stdout
                continue
            refuse_unwritable(path, flag=flag, folder=folder)
            refuse_input_overlap(path, inputs, flag=flag, folder=folder)
