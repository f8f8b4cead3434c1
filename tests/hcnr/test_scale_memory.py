"""Peak memory of `surgery patch` against depth and patch size (issue 13), measured by
benchmarks/scale_memory.py; the harness itself is checked on small cases first."""

import subprocess
import sys

import pytest

from benchmarks.scale_memory import (
    DEPTH_GROWTH_MB,
    REPO,
    Case,
    ScaleResult,
    ScaleRun,
    baseline_peak,
    evaluate,
    format_table,
    measure_patch,
    measure_scale,
    peak_of,
)
from benchmarks.synthetic_llama import ensure_pair, spec_for


def _case(name: str, depth: int, r_iw: float, peak: float, size: int) -> Case:
    return Case(name, depth, r_iw, peak, peak - 300, size, 1.0)


def test_checks_pass_on_flat_memory_and_fail_on_growth():
    shallow = _case("d8", 8, 0.5, 700, 4_000_000)
    small = _case("d8 small", 8, 0.125, 690, 1_000_000)
    ok = evaluate(300, shallow, _case("d32", 32, 0.5, 700 + DEPTH_GROWTH_MB, 4_000_000), small)
    assert all(c.passed for c in ok), ok
    bad = evaluate(300, shallow, _case("d32", 32, 0.5, 2400, 4_000_000), _case("d8 small", 8, 0.125, 600, 3_900_000))
    failed = [c.name for c in bad if not c.passed]
    assert len(failed) == 4, bad  # growth, deep over baseline+1 GB, r_iw RSS apart, sizes not ~4x
    assert "FAIL  depth 32 - depth 8 <= 100 MB: +1700 MB" in format_table(ScaleResult(300, (shallow,), bad))


def test_child_peak_counts_the_child_only():
    """VmHWM of the child: its own allocation shows, the parent's memory does not leak in over fork+exec."""
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])  # resident in this (parent) process
    idle = peak_of(["-c", "pass"])
    busy = peak_of(["-c", "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"])
    assert idle.returncode == 0 and busy.returncode == 0
    assert idle.peak_mb < 100
    assert 280 < busy.peak_mb - idle.peak_mb < 340
    del ballast


def test_child_failure_is_reported_with_its_exit_code():
    peak = peak_of(["-c", "import sys; print('boom'); sys.exit(3)"])
    assert peak.returncode == 3 and "boom" in peak.output_tail and peak.peak_mb > 0


@pytest.mark.tiny
def test_one_patch_case_is_measured_on_a_tiny_pair(tmp_path):
    """The CLI arguments the harness passes are accepted, and the numbers are plausible."""
    pair = ensure_pair(spec_for(depth=1, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=512), tmp_path)
    case = measure_patch("tiny", pair, 1, 0.5, tmp_path, baseline_mb=100.0, max_length=48)
    assert case.patch_bytes > 0 and not (tmp_path / "tiny.patch").exists()
    assert case.peak_mb > 200 and case.over_baseline_mb == case.peak_mb - 100.0  # torch alone is > 200 MB


def test_baseline_child_imports_torch():
    assert baseline_peak().peak_mb > 200


#: what the streamed pipeline holds today (docs/scale.md), with room for noise: the regression guard.
#: Issue 13's own targets (100 MB, 1 GB, 50 MB) are what ``python -m benchmarks.scale_memory`` prints as
#: PASS/FAIL. The r_iw bound is the issue's own 50 MB: measured 5 and 24 MB apart since the protect solver
#: forms its terms one at a time (93-115 MB before: the code before fails this bound). The design this replaced
#: was 1.9 GB over the baseline at depth 8 alone and grew by gigabytes with depth.
GUARD_DEPTH_GROWTH_MB = 250.0
GUARD_OVER_BASELINE_MB = 1536.0
GUARD_R_IW_RSS_MB = 50.0


@pytest.mark.slow
def test_patch_memory_is_flat_in_depth_and_in_patch_size(tmp_path):
    """Depth 8 vs 32 (hidden 1024, intermediate 4096, 16/4 heads), 16 + 16 examples, protect, 1 thread: peak
    RSS hardly grows with depth, stays bounded over the imports' baseline, and hardly depends on r_iw while
    the patches differ ~4x. The pairs are cached in $SURGERY_CACHE."""
    result = measure_scale(ScaleRun(), tmp_path)
    table = "\n" + format_table(result)
    print(table)  # the numbers docs/scale.md quotes (pytest -s)
    shallow, deep, small = result.cases
    assert deep.peak_mb - shallow.peak_mb <= GUARD_DEPTH_GROWTH_MB, table
    assert all(c.peak_mb < result.baseline_mb + GUARD_OVER_BASELINE_MB for c in result.cases), table
    assert abs(shallow.peak_mb - small.peak_mb) <= GUARD_R_IW_RSS_MB, table
    assert 3 <= shallow.patch_bytes / small.patch_bytes <= 5, table


def test_script_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale_memory", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0 and "--shallow" in out.stdout and "--small-r-iw" in out.stdout
