"""SIGKILL ``surgery patch`` after some parts are written, rerun: the same sha256 as an uninterrupted run,
and the log says which parts were reused (a real kill of a real process, on a synthetic 6-block Llama)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.synthetic_llama import ensure_pair, spec_for


def _cmd(pair, out):
    return [
        sys.executable, "-m", "surgery.cli", "--threads", "1", "patch", str(pair.sft), "--base", str(pair.base),
        "--honesty-data", str(pair.honesty), "--task-data", str(pair.task), "-o", str(out),
        "--preset", "paper", "--compensation", "protect", "--max-length", "48",
    ]  # fmt: skip


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_bytes_and_logs_the_reused_parts(tmp_path):
    spec = spec_for(depth=6, hidden=256, intermediate=1024, heads=4, kv_heads=2, vocab=512, examples=16)
    pair = ensure_pair(spec, tmp_path / "pairs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    ref = tmp_path / "ref.safetensors"
    subprocess.run(_cmd(pair, ref), env=env, check=True, capture_output=True, timeout=600)

    out = tmp_path / "p.safetensors"
    fisher = tmp_path / "p.safetensors.work" / "fisher" / "sft" / "hon"
    proc = subprocess.Popen(_cmd(pair, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (fisher.is_dir() and len(list(fisher.glob("*.safetensors"))) >= 2):
        assert proc.poll() is None, "the patch ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-written at the destination

    res = subprocess.run(_cmd(pair, out), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _sha(out) == _sha(ref)
    reused = [line for line in res.stderr.splitlines() if "reusing" in line]
    assert any("activations sft/hon" in line for line in reused), res.stderr[-2000:]
    assert any("Fisher sums sft/hon" in line for line in reused), res.stderr[-2000:]
    assert not (tmp_path / "p.safetensors.work").exists()
