"""The one atomic writer: a reader never sees half a file, because every output is written to a temp
file (or folder) beside its destination and renamed into place; it gets the normal file mode."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file made by :mod:`tempfile` (0600/0700) the mode a plain ``open`` would: 0666/0777 less the umask.

    Outputs are shared (models, patches, reports), so they must be readable like any other file.
    """
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` on success and is removed on failure.

    ``suffix`` matters for writers that pick the format from the name (matplotlib: ".png").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        normal_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, **dump_kwargs: Any) -> Path:
    """JSON with a trailing newline; ``dump_kwargs`` go to :func:`json.dumps` (default indent=2)."""
    dump_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(data, **dump_kwargs) + "\n")


def save_figure_atomic(fig, path: str | os.PathLike) -> Path:
    """A matplotlib figure saved as PNG, atomically."""
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it becomes ``path`` (replacing an old one when
    ``replace``), with ordinary permissions; on failure it is removed and ``path`` is untouched."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                normal_mode(f)
            elif f.is_dir():
                normal_mode(f, folder=True)
        normal_mode(tmp, folder=True)
        if path.exists() and replace:
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
