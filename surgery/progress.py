"""Progress bars and stage timing, silenced by ``--quiet``."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("surgery")


#: set by the CLI for each invocation (``-q``); a module setting, so it never leaks into a later call
_quiet = False


def set_quiet(flag: bool) -> None:
    """Silence progress bars for this invocation (the CLI calls it every time, so ``-q`` never sticks)."""
    global _quiet
    _quiet = flag
    _library_bars(not flag)


#: whether :func:`_library_bars` turned transformers' bars off (only then does it turn them back on)
_library_bars_off = False


def _library_bars(enabled: bool) -> None:
    """transformers and huggingface_hub draw bars of their own (5.x: "Loading weights" at every model load);
    ``-q`` hides those too. transformers is imported only to turn them off, so ``surgery --help`` stays instant,
    and they are turned back on only where this turned them off (a user's ``HF_HUB_DISABLE_PROGRESS_BARS`` holds).
    """
    global _library_bars_off
    if enabled == (not _library_bars_off):
        return
    from transformers.utils import logging as hf_logging

    if enabled:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    _library_bars_off = not enabled


def quiet() -> bool:
    """True under ``-q`` or when the caller's environment asks (``SURGERY_QUIET=1``, e.g. a worker process)."""
    return _quiet or os.environ.get("SURGERY_QUIET") == "1"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr unless quiet (or not worth showing: fewer than 2 steps)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet() or None, leave=False, file=sys.stderr)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far.

    ``VmHWM`` from /proc where it exists: ``ru_maxrss`` of a child started by fork + exec starts at
    its parent's high-water mark, which would blame a patch run for its launcher's memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageTimer:
    """Wall time per named stage, logged as each stage ends and kept for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, log_each: bool = True) -> Iterator[None]:
        """Time one stage (times of a stage entered again add up; ``log_each=False`` for per-block steps)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            if log_each:
                log.info("%-14s %7.1f s   peak RSS %7.0f MB", name, dt, peak_rss_mb())

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
