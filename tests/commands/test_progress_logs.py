"""Progress that works in logs (issue 15, item 8): when stderr is not a terminal, long stages log a line at
least every ``SURGERY_PROGRESS_INTERVAL`` seconds with done/total, rate and ETA, or a heartbeat."""

from __future__ import annotations

import io
import logging
import re
import time

import pytest

from surgery import progress as progress_module
from surgery.progress import StageTimer, heartbeat, interval, progress, progress_line, set_quiet

INTERVAL = 0.05


@pytest.fixture
def log_mode(monkeypatch, caplog):
    """stderr as in a log file (not a terminal), a short interval, the progress logger captured."""
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setenv("SURGERY_PROGRESS_INTERVAL", str(INTERVAL))
    monkeypatch.delenv("SURGERY_QUIET", raising=False)
    set_quiet(False)
    caplog.set_level(logging.INFO, logger="surgery")
    yield caplog
    set_quiet(False)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "surgery"]


def test_a_counted_loop_logs_done_total_rate_and_eta(log_mode):
    out = []
    for i in progress(range(8), desc="fisher", unit="block"):
        time.sleep(2 * INTERVAL)
        out.append(i)
    assert out == list(range(8))  # the items pass through unchanged
    lines = [line for line in _lines(log_mode) if line.startswith("fisher: ")]
    assert len(lines) >= 4, lines  # about one line per interval over 16 intervals
    pattern = re.compile(
        r"^fisher: (\d+)/8 block \(\d+%\), [0-9.e+]+ (block/s|s/block)(, ETA \d+:\d\d)?, \d+:\d\d elapsed$"
    )
    for line in lines:
        assert pattern.match(line), line
    assert any("ETA" in line for line in lines)
    assert lines[-1].startswith("fisher: 8/8 block (100%)")  # a long loop says that it ended
    done = [int(pattern.match(line).group(1)) for line in lines]
    assert done == sorted(done)


def test_one_long_step_still_gets_lines_while_it_runs(log_mode):
    for _ in progress([1], desc="hessians", unit="block"):
        time.sleep(6 * INTERVAL)
    running = [line for line in _lines(log_mode) if line.startswith("hessians: 0/1")]
    assert len(running) >= 2, _lines(log_mode)


def test_a_stage_without_a_count_logs_a_heartbeat(log_mode):
    timer = StageTimer()
    with timer.stage("load model"):
        time.sleep(5 * INTERVAL)
    beats = [line for line in _lines(log_mode) if line.startswith("load model: still running")]
    assert len(beats) >= 2 and all(line.endswith("elapsed") for line in beats)
    assert "load model" in timer.seconds


def test_the_heartbeat_stays_quiet_while_a_counted_loop_reports(log_mode):
    with heartbeat("patch"):
        for _ in progress(range(10), desc="selection", unit="matrix"):
            time.sleep(INTERVAL)
    lines = _lines(log_mode)
    assert sum(line.startswith("selection:") for line in lines) >= 3
    assert sum(line.startswith("patch: still running") for line in lines) <= 2  # only the gaps between lines


def test_nothing_is_logged_when_quiet_or_quick(log_mode):
    set_quiet(True)
    assert list(progress(range(3), desc="quiet")) == [0, 1, 2]
    with heartbeat("quiet stage"):
        time.sleep(3 * INTERVAL)
    set_quiet(False)
    assert list(progress(range(3), desc="quick")) == [0, 1, 2]  # over before the first interval
    assert not _lines(log_mode)


def test_a_terminal_gets_a_bar_not_lines(monkeypatch, caplog):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    monkeypatch.setenv("SURGERY_PROGRESS_INTERVAL", str(INTERVAL))
    caplog.set_level(logging.INFO, logger="surgery")
    assert not progress_module.log_lines()
    for _ in progress(range(3), desc="bar"):
        time.sleep(INTERVAL)
    assert not [r for r in caplog.records if r.getMessage().startswith("bar:")]


def test_interval_defaults_to_30_seconds_and_ignores_nonsense(monkeypatch):
    monkeypatch.delenv("SURGERY_PROGRESS_INTERVAL", raising=False)
    assert interval() == 30.0
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("SURGERY_PROGRESS_INTERVAL", bad)
        assert interval() == 30.0
    monkeypatch.setenv("SURGERY_PROGRESS_INTERVAL", "2.5")
    assert interval() == 2.5


def test_progress_line_format():
    assert progress_line("apply", 30, 120, 60.0, "tensor") == (
        "apply: 30/120 tensor (25%), 2 s/tensor, ETA 3:00, 1:00 elapsed"
    )
    assert (
        progress_line("generate", 100, 100, 50.0, "batch")
        == "generate: 100/100 batch (100%), 2 batch/s, ETA 0:00, 0:50 elapsed"
    )
    assert progress_line("scan", 7, None, 3700.0) == "scan: 7 it, 529 s/it, 1:01:40 elapsed"
    assert progress_line("start", 0, 10, 1.0) == "start: 0/10 it (0%), 0 it/s, 0:01 elapsed"
