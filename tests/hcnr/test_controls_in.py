"""``--controls-in task`` (issue 16, protect's Hessian data): D_hon's answerable controls leave protect's honesty
term (outputs matched to the base model) for its task term (outputs kept at the SFT model's), so the base is
matched only on the questions to decline."""

from __future__ import annotations

import json

import pytest
import torch

from surgery.errors import OptionError
from surgery.hcnr.hessian import fuses_hessians
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.patchfile import read_patch
from tests.support.faults import assert_one_error_line, cli

pytestmark = pytest.mark.tiny

DECLINE = [
    {"prompt": f"Who wrote the lost paper number {i}?", "response": "I don't know.", "kind": "invented"}
    for i in range(6)
]
CONTROLS = [{"prompt": f"What is {i} plus one?", "response": f"{i + 1}", "kind": "answerable"} for i in range(5)]
TASK = [{"prompt": f"The country of place {i} is", "response": "France"} for i in range(8)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _weights(path):
    return {e.weight: e.values for e in read_patch(path)[1]}


def test_controls_in_task_equals_moving_the_controls_into_d_task(tiny_pair, tmp_path):
    """The split sums exactly the tokens a D_hon without controls and a D_task with them would (random selection,
    so the Fisher scores, which do change with D_hon, pick nothing)."""
    base, sft, _ = tiny_pair
    opts = {"compensation": "protect", "r_iw": 0.25, "r_cw": 1.0, "selection": "random", "batch_size": 4}
    split = tmp_path / "split.safetensors"
    make_patch(
        str(sft),
        str(base),
        _jsonl(tmp_path / "hon.jsonl", DECLINE[:3] + CONTROLS + DECLINE[3:]),  # controls inside mixed batches
        _jsonl(tmp_path / "task.jsonl", TASK),
        split,
        PatchOptions(**opts, controls_in="task"),
    )
    moved = tmp_path / "moved.safetensors"
    make_patch(
        str(sft),
        str(base),
        _jsonl(tmp_path / "hon-declines.jsonl", DECLINE),
        _jsonl(
            tmp_path / "task-and-controls.jsonl", TASK + [{k: r[k] for k in ("prompt", "response")} for r in CONTROLS]
        ),
        moved,
        PatchOptions(**opts),
    )
    default = tmp_path / "default.safetensors"
    make_patch(
        str(sft),
        str(base),
        tmp_path / "hon.jsonl",
        tmp_path / "task.jsonl",
        default,
        PatchOptions(**opts),
    )
    got, want, before = _weights(split), _weights(moved), _weights(default)
    assert got.keys() == want.keys() and got
    for name in got:  # the same sums in other batches: equal up to float32 rounding
        assert torch.allclose(got[name].float(), want[name].float(), rtol=1e-4, atol=1e-6), name
    assert any(not torch.allclose(got[n].float(), before[n].float(), rtol=1e-3, atol=1e-5) for n in got)


def test_controls_in_task_is_refused_without_protect_or_without_both_kinds_of_line(tiny_pair, calib, tmp_path):
    with pytest.raises(OptionError, match="needs --compensation protect"):
        PatchOptions(controls_in="task")
    assert not fuses_hessians(PatchOptions(compensation="protect", controls_in="task"), [], 1)
    base, sft, _ = tiny_pair
    out = tmp_path / "p.safetensors"
    for hon in (calib[0], _jsonl(tmp_path / "declines.jsonl", DECLINE)):  # no kinds at all; no controls
        args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(hon), "--task-data", str(calib[1])]
        res = cli(*args, "-o", str(out), "--controls-in", "task")
        line = assert_one_error_line(res)
        assert "--controls-in task needs D_hon lines of kind 'answerable' and lines to decline" in line
        assert not out.exists()
