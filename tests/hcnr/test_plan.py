"""``surgery patch --plan`` prints the run's needs without running it; a run that cannot fit is refused up front."""

from __future__ import annotations

import pytest

from surgery.errors import SurgeryError
from surgery.hcnr import pipeline
from surgery.hcnr.options import ComputeOptions, PatchOptions
from surgery.hcnr.pipeline import make_patch, plan_patch
from surgery.hcnr.workdir import work_folder_of
from tests.support.faults import cli


def test_plan_prints_memory_disk_and_flops_and_writes_nothing(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    out = tmp_path / "p.safetensors"
    args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(calib[0]), "--task-data", str(calib[1])]
    res = cli(*args, "-o", str(out), "--plan")
    assert res.exit_code == 0, res.output
    for what in ("peak host memory", "peak device memory", "work folder disk", "TFLOP", "blocks 2"):
        assert what in res.output
    assert not out.exists() and not work_folder_of(out).exists()


def test_plan_grows_with_what_the_run_holds(tiny_pair, calib):
    base, sft, _ = tiny_pair
    small = plan_patch(str(sft), str(base), *calib, PatchOptions(max_samples=4))
    large = plan_patch(str(sft), str(base), *calib, PatchOptions(max_samples=16))
    assert large.disk_bytes > small.disk_bytes and large.flops > small.flops and large.tokens > small.tokens
    protect = plan_patch(str(sft), str(base), *calib, PatchOptions(compensation="protect"))
    exact = plan_patch(str(sft), str(base), *calib, PatchOptions())
    assert protect.detail["Hessians of one block"] == 2 * exact.detail["Hessians of one block"] > 0
    bf16 = plan_patch(str(sft), str(base), *calib, PatchOptions(), compute=ComputeOptions(dtype="bfloat16"))
    assert bf16.detail["one block's weights"] * 2 == exact.detail["one block's weights"]


def test_a_gpu_run_is_planned_on_a_machine_without_one(tiny_pair, calib, tmp_path, monkeypatch):
    """Planning for the GPU machine a run will go to must not need that GPU here (before: 'CUDA is not
    available' for --device cuda --plan); the estimate moves the working set from host to device."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base, sft, _ = tiny_pair
    args = ["patch", str(sft), "--base", str(base), "--honesty-data", str(calib[0]), "--task-data", str(calib[1])]
    res = cli(*args, "-o", str(tmp_path / "p.safetensors"), "--plan", "--device", "cuda", "--dtype", "bfloat16")
    assert res.exit_code == 0, res.output
    cpu = plan_patch(str(sft), str(base), *calib, compute=ComputeOptions(device="cpu", dtype="bfloat16"))
    gpu = plan_patch(str(sft), str(base), *calib, compute=ComputeOptions(device="cuda", dtype="bfloat16"))
    assert cpu.device_bytes == 0 < gpu.device_bytes and gpu.host_bytes < cpu.host_bytes
    assert f"{gpu.device_bytes / 2**20:9.0f} MB" in res.output


@pytest.mark.parametrize(
    ("have", "names"),
    [
        ({"host": 1, "disk": 10**15}, "--dtype bfloat16"),
        ({"host": 10**15, "disk": 1}, "--max-samples"),
    ],
)
def test_a_run_that_does_not_fit_is_refused_before_any_work(have, names, tiny_pair, calib, tmp_path, monkeypatch):
    base, sft, _ = tiny_pair
    out = tmp_path / "p.safetensors"
    monkeypatch.setattr(pipeline, "available", lambda *_: have)
    with pytest.raises(SurgeryError, match="see surgery patch --plan") as exc:
        make_patch(str(sft), str(base), *calib, out)
    assert names in str(exc.value)
    assert not out.exists() and not work_folder_of(out).exists()
