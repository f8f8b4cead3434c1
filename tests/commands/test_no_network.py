"""The core loop runs with the network blocked: ``check -> patch -> apply -> eval -> export`` on tiny models.

One child process (so the block cannot leak into other tests) replaces every way to open an internet connection
(``socket.connect``/``connect_ex``/``sendto`` on IPv4/IPv6 sockets, ``create_connection``, ``getaddrinfo``) by
one that records the attempt and fails, removes ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` from the
environment (so the test does not rely on the caller having set them), and runs the five commands in turn.
Every command must succeed and no connection may have been attempted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_calibration

REPO = Path(__file__).resolve().parents[2]

#: the child: block the network, then run each argv of $SURGERY_TEST_STEPS through the CLI
BLOCKED = r"""
import json, os, socket, sys

attempts = []

def _refuse(what):
    def refused(*args, **kwargs):
        attempts.append(f"{what} {args[1:] if what.startswith('socket.') else args}")
        raise OSError(101, "network blocked by the test")
    return refused

for name in ("connect", "connect_ex", "sendto"):
    original = getattr(socket.socket, name)
    def guarded(self, *args, _original=original, _name=name, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            return _refuse("socket." + _name)(self, *args)
        return _original(self, *args, **kwargs)
    setattr(socket.socket, name, guarded)
socket.create_connection = _refuse("create_connection")
socket.getaddrinfo = _refuse("getaddrinfo")

from surgery.cli import main

codes = []
for argv in json.loads(os.environ["SURGERY_TEST_STEPS"]):
    try:
        main(["-q", "--threads", "1", *argv], prog_name="surgery", standalone_mode=False)
        codes.append(0)
    except SystemExit as exc:
        codes.append(exc.code if isinstance(exc.code, int) else 1)
    if codes[-1] != 0:
        break
with open(os.environ["SURGERY_TEST_RESULT"], "w") as f:
    json.dump({"codes": codes, "attempts": attempts}, f)
"""


@pytest.mark.onnx
def test_the_core_loop_makes_no_network_connection(tiny_pair, shared_data, tmp_path):
    pytest.importorskip("optimum.onnxruntime", reason="export needs the [onnx] extra")
    base, sft, _ = tiny_pair
    hon, task = write_calibration(tmp_path / "calib")
    patch, repaired, onnx = tmp_path / "p.safetensors", tmp_path / "repaired", tmp_path / "onnx"
    steps = [
        ["check", str(sft), "--base", str(base)],
        ["patch", str(sft), "--base", str(base), "--honesty-data", str(hon), "--task-data", str(task)]
        + ["--max-samples", "8", "-o", str(patch)],
        ["apply", str(sft), str(patch), "-o", str(repaired)],
        ["eval", str(repaired), "-b", "selfaware", "--limit", "4", "--max-new-tokens", "2", "--batch-size", "4"]
        + ["--data-dir", str(shared_data), "--json", str(tmp_path / "eval.json")],
        ["export", str(repaired), "-o", str(onnx), "--greedy-tokens", "2"],
    ]
    result = tmp_path / "result.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}",
        SURGERY_TEST_STEPS=json.dumps(steps),
        SURGERY_TEST_RESULT=str(result),
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    assert proc.returncode == 0 and result.is_file(), (proc.stdout, proc.stderr)
    outcome = json.loads(result.read_text())
    assert outcome["codes"] == [0] * len(steps), (outcome, proc.stderr)
    assert outcome["attempts"] == [], outcome["attempts"]
    assert patch.is_file() and (repaired / "model.safetensors").is_file() and (onnx / "model.onnx").is_file()
    assert json.loads((tmp_path / "eval.json").read_text())


def test_the_block_itself_refuses_a_connection(tmp_path):
    """The harness: with the same block, a connection attempt is recorded (so an empty list means something)."""
    probe = BLOCKED.split("from surgery.cli import main")[0] + (
        "try:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
        "try:\n    socket.socket().connect(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
        "print(json.dumps(attempts))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert len(json.loads(out.stdout)) == 2
