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
