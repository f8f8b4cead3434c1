"""Progress bars and stage timing, silenced by ``--quiet``.

On a terminal, progress is a tqdm bar. Anywhere else (a log file, CI, a job scheduler) a bar prints
nothing useful, so long stages log one line at least every ``SURGERY_PROGRESS_INTERVAL`` seconds
(default 30) instead: ``done/total``, rate and ETA for a counted loop (:func:`progress`), and a
heartbeat with the elapsed time for a stage without a count (:meth:`StageTimer.stage`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
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


#: seconds between progress lines when the output is not a terminal (env ``SURGERY_PROGRESS_INTERVAL``)
DEFAULT_INTERVAL = 30.0

#: monotonic time of the last progress line any loop or stage logged (a heartbeat stays quiet after one)
_last_line = 0.0
#: counted loops logging right now (a heartbeat stays quiet while one reports)
_active_loops = 0


def interval() -> float:
    """Seconds between progress lines in logs: ``$SURGERY_PROGRESS_INTERVAL``, else 30."""
    try:
        value = float(os.environ.get("SURGERY_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def log_lines() -> bool:
    """True when progress goes to the log as lines: not quiet, and stderr is not a terminal."""
    if quiet():
        return False
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: no bar can be drawn there either
        return True


def _clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def progress_line(desc: str, done: int, total: int | None, elapsed: float, unit: str = "it") -> str:
    """One progress line: ``desc: 12/30 block (40%), 0.52 block/s, ETA 0:35, 0:23 elapsed``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    count = f"{done}/{total} {unit} ({100 * done / total:.0f}%)" if total else f"{done} {unit}"
    speed = f"{rate:.3g} {unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.3g} s/{unit}"
    eta = f", ETA {_clock((total - done) / rate)}" if total and rate > 0 else ""
    return f"{desc}: {count}, {speed}{eta}, {_clock(elapsed)} elapsed"


class _Ticker:
    """A daemon thread that calls ``say`` every ``every`` seconds until stopped."""

    def __init__(self, say: Callable[[], None], every: float) -> None:
        self._stop = threading.Event()
        self._say, self._every = say, every
        self._thread = threading.Thread(target=self._run, name="surgery-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._say()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


def _emit(line: str) -> None:
    global _last_line
    _last_line = time.monotonic()
    log.info("%s", line)


def _logged(iterable: Iterable[T], desc: str, total: int | None, unit: str) -> Iterator[T]:
    """``iterable`` with a progress line every :func:`interval` seconds (also while one step takes long)."""
    global _active_loops
    t0 = time.monotonic()
    done = 0

    def say() -> None:
        _emit(progress_line(desc, done, total, time.monotonic() - t0, unit))

    ticker = _Ticker(say, interval())
    _active_loops += 1
    try:
        for item in iterable:
            yield item
            done += 1
    finally:
        _active_loops -= 1
        ticker.stop()
    if time.monotonic() - t0 >= interval():  # a long loop also says that it ended
        say()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A tqdm bar on a terminal, progress lines in a log (see the module docstring), nothing when quiet."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if log_lines():
        return _logged(iterable, desc, total, unit)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=quiet() or None, leave=False, file=sys.stderr)


@contextlib.contextmanager
def heartbeat(name: str) -> Iterator[None]:
    """While the block runs, log ``name: still running, 1:30 elapsed`` every :func:`interval` seconds when the
    output is not a terminal, no counted loop is reporting and no other progress line was logged meanwhile
    (a stage without a count)."""
    if not log_lines():
        yield
        return
    t0 = time.monotonic()
    every = interval()

    def say() -> None:
        if not _active_loops and time.monotonic() - _last_line >= every * 0.99:
            _emit(f"{name}: still running, {_clock(time.monotonic() - t0)} elapsed")

    ticker = _Ticker(say, every)
    try:
        yield
    finally:
        ticker.stop()


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
            with heartbeat(name) if log_each else contextlib.nullcontext():
                yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            if log_each:
                log.info("%-14s %7.1f s   peak RSS %7.0f MB", name, dt, peak_rss_mb())

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
