"""The one atomic writer: a reader never sees half a file, because every output is written to a temp
file (or folder) beside its destination and renamed into place; it gets the normal file mode.

Two runs writing the same destination would race (the loser's rename fails or deletes the winner's output), so
every writer holds the destination's lock (:func:`destination_lock`, an ``flock`` on a hidden
``.<name>.lock`` beside it, removed afterwards): a second run is refused with one sentence. A run killed
with SIGKILL cannot clean up; its temp names (``.<name>.XXXXXXXX.tmp`` files, ``.<name>.tmp-XXXXXXXX``
folders) are recognised by their exact pattern and removed by the next run that takes the same lock, which
proves that no live run still writes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SurgeryError

try:  # POSIX; elsewhere outputs are still atomic, only not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class DestinationBusy(SurgeryError):
    """Another run holds the lock of the output being written."""


#: the destinations this process holds the lock of (resolved path -> nesting depth): writers nest
#: (an export locks its folder, then writes it with :func:`atomic_folder`)
_HELD: dict[str, int] = {}
#: the random part :mod:`tempfile` puts into names
_RANDOM = r"[a-z0-9_]{8}"
#: the tags of temp folders beside a destination (``tmp``: :func:`atomic_folder`; ``patched``: deploy's scratch)
TEMP_FOLDER_TAGS = ("tmp", "patched")


def lock_path(path: str | os.PathLike) -> Path:
    """The hidden lock file beside ``path``."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _is_stale_temp(name: str, dest_name: str) -> bool:
    """``name`` is exactly one of the temp names this module (or export's scratch) makes for ``dest_name``."""
    d = re.escape(dest_name)
    tags = "|".join(TEMP_FOLDER_TAGS)
    return bool(re.fullmatch(rf"\.{d}\.{_RANDOM}\.[A-Za-z0-9]+|\.{d}\.(?:{tags})-{_RANDOM}", name))


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files and folders an interrupted run left beside ``path``; call only under its lock.

    Only names of exactly our pattern and owned by this user are touched (a symlink is unlinked, never
    followed). Returns what was removed.
    """
    path = Path(path)
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _is_stale_temp(entry.name, path.name):
            continue
        try:
            if entry.lstat().st_uid != os.getuid():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:  # another user's, or gone meanwhile: leave it
            log.debug("could not remove %s: %s", entry, exc)
            continue
        log.warning("removed %s, left by an interrupted run", entry)
        removed.append(entry)
    return removed


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def destination_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of destination ``path`` for the block; refuse with :class:`DestinationBusy` if another
    process holds it. The first (outermost) holder removes stale temps of ``path`` and, at the end, the lock file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.join(os.path.realpath(path.parent), path.name)
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _release_depth(key)
        return
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DestinationBusy(
                f"Another surgery run{_holder(lock)} is writing {path}; wait for it to finish or choose another output."
            ) from None
        try:  # the file we locked may have been removed by a holder that just finished: then lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD[key] = 1
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        remove_stale_temps(path)
        yield
    finally:
        _release_depth(key)
        with contextlib.suppress(OSError):
            lock.unlink()  # still holding it: a run waiting on this file sees it gone and locks a new one
        os.close(fd)


def _release_depth(key: str) -> None:
    _HELD[key] -= 1
    if not _HELD[key]:
        del _HELD[key]


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


def normal_modes(folder: str | os.PathLike) -> None:
    """:func:`normal_mode` for a folder made by :mod:`tempfile` and everything in it (symlinks untouched)."""
    folder = Path(folder)
    for f in folder.rglob("*"):
        if f.is_file() and not f.is_symlink():
            normal_mode(f)
        elif f.is_dir() and not f.is_symlink():
            normal_mode(f, folder=True)
    normal_mode(folder, folder=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` on success and is removed on failure.

    ``suffix`` matters for writers that pick the format from the name (matplotlib: ".png").
    """
    path = Path(path)
    with destination_lock(path):
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
    path = Path(path)
    with destination_lock(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            yield tmp
            normal_modes(tmp)
            if path.exists() and replace:
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
