"""The fault contract every refused command keeps, checked one way by every fault-injection test.

A refused command exits 2 with exactly one ``error: `` line on stderr (no traceback), leaves nothing at
its destination (no output, no temporary file beside it) and changes no input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner, Result

from surgery.cli import main


def digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), and every folder: "inputs unchanged"."""
    out: dict[str, str] = {}
    for root in paths:
        for f in sorted([root] if root.is_file() else root.rglob("*")):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
    return out


def cli(*args: str) -> Result:
    """``surgery -q --threads 1 ARGS`` in-process (one thread: robust on a shared CPU)."""
    return CliRunner().invoke(main, ["-q", "--threads", "1", *args])


def assert_one_error_line(res: Result) -> str:
    """Exit 2, one ``error:`` line on stderr, no traceback; returns the line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception  # not a crash caught by the test runner
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    return lines[0]


def assert_refused(args: list[str], inputs: list[Path], dest: Path | None, *, words: tuple[str, ...] = ()) -> str:
    """Run ``surgery ARGS`` and assert the whole fault contract; ``words`` must appear in the error line."""
    before = digest(inputs)
    existed = dest is not None and dest.exists()
    line = assert_one_error_line(cli(*args))
    if dest is not None and not existed:
        assert not dest.exists(), f"{dest} was left behind"
        if dest.parent.is_dir():
            assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")], "temp files left"
    assert digest(inputs) == before, "an input was changed"
    for w in words:
        assert w in line, line
    return line


# ---------------------------------------------------------------- runs in a child process (signals, races)

#: ``python -c`` code that runs ``surgery ARGS`` after wrapping ``os.replace`` so that the run stops (announcing
#: it in the file $SURGERY_TEST_MARKER) at a chosen point of writing $SURGERY_TEST_DEST: ``write`` (the first
#: rename inside a hidden temp beside it: half-written) or ``publish`` (the rename of the finished temp onto it).
#: Test code only: the product has no hook.
PAUSING_CLI = r"""
import os, sys, time
dest = os.path.abspath(os.environ["SURGERY_TEST_DEST"])
point, marker = os.environ.get("SURGERY_TEST_PAUSE", ""), os.environ.get("SURGERY_TEST_MARKER", "")
_replace = os.replace

def _pause():
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(float(os.environ.get("SURGERY_TEST_PAUSE_S", "120")))

def replace(src, dst, *args, **kwargs):
    global point
    dst_abs = os.path.abspath(os.fspath(dst))
    inside_temp = os.path.basename(os.path.dirname(dst_abs)).startswith("." + os.path.basename(dest) + ".")
    if (point == "publish" and dst_abs == dest) or (point == "write" and inside_temp):
        point = ""
        _pause()
    return _replace(src, dst, *args, **kwargs)

os.replace = replace
from surgery.cli import main
main(["-q", "--threads", "1", *sys.argv[1:]], prog_name="surgery")
"""


def start_cli(args: list[str], dest: Path, *, pause: str = "", marker: Path | None = None, pause_s: float = 120.0):
    """``surgery ARGS`` in a child process (see :data:`PAUSING_CLI`); returns the ``subprocess.Popen``."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "SURGERY_TEST_DEST": str(dest),
        "SURGERY_TEST_PAUSE": pause,
        "SURGERY_TEST_MARKER": str(marker or ""),
        "SURGERY_TEST_PAUSE_S": str(pause_s),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-c", PAUSING_CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc, timeout: float = 300.0) -> None:
    """Wait until ``path`` exists (the child reached its pause); fail if the child ends first."""
    import time

    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) before reaching its pause:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"the run did not reach its pause within {timeout} s")
        time.sleep(0.05)


def temps_beside(dest: Path) -> list[Path]:
    """Hidden files and folders beside ``dest`` that carry its name (temps, locks)."""
    return sorted(p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


# ---------------------------------------------------------------- counting the suite

#: the fault classes of issue 14; every fault case is marked ``@pytest.mark.fault("<class>")``
FAULT_CLASSES = ("patch", "folder", "text", "outputs", "interruption")


def pytest_collection_finish(session) -> None:  # a pytest hook, active with ``-p tests.support.faults``
    """With $SURGERY_FAULT_COUNT set, write ``{node id: fault class}`` of the collected fault cases there."""
    import json
    import os

    target = os.environ.get("SURGERY_FAULT_COUNT")
    if not target:
        return
    cases = {}
    for item in session.items:
        mark = item.get_closest_marker("fault")
        if mark is not None:
            cases[item.nodeid] = mark.args[0] if mark.args else ""
    Path(target).write_text(json.dumps(cases, indent=1))


def patch_args(sft: Path, base: Path, hon: Path, task: Path, out: Path) -> list[str]:
    """``surgery patch`` arguments for a fault case (the pair, both calibration files, the output)."""
    data = ["--honesty-data", str(hon), "--task-data", str(task)]
    return ["patch", str(sft), "--base", str(base), *data, "-o", str(out)]
