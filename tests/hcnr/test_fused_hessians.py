"""Hessians summed during the Fisher pass's recompute (issue 13's speed work) give the same patch, byte for
byte, as the separate Hessian pass after selection: same float32 sums, same order, same groups."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from safetensors import safe_open

from surgery.hcnr import hessian
from surgery.hcnr.hessian import fused_hessian_bytes, fused_layers, fuses_hessians
from surgery.hcnr.options import ComputeOptions, PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.hcnr.skeleton import Block
from surgery.linear_layers import LinearLayer
from surgery.patchfile import read_manifest

RECIPE = {"compensation": "protect", "r_iw": 0.125, "r_cw": 0.8}


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _same_patch(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    changed = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not changed, changed
    assert read_manifest(a).stats == read_manifest(b).stats


def _layer(name: str, out_f: int, in_f: int) -> LinearLayer:
    return LinearLayer(f"b.0.{name}", f"b.0.{name}.weight", "b.0", out_f, in_f, False)


BLOCK = Block(
    0,
    "b.0",
    (_layer("q", 8, 8), _layer("k", 4, 8), _layer("v", 4, 8), _layer("o", 8, 8), _layer("down", 8, 32)),
)


def test_only_the_layers_reading_the_narrowest_input_are_fused():
    assert [layer.weight for layer in fused_layers(BLOCK)] == [
        "b.0.q.weight",
        "b.0.k.weight",
        "b.0.v.weight",
        "b.0.o.weight",
    ]
    # float32 sums, counted per layer (an upper bound), once per Hessian the compensation needs
    assert fused_hessian_bytes([BLOCK], PatchOptions(**RECIPE)) == 4 * 4 * 64 * 2
    assert fused_hessian_bytes([BLOCK], PatchOptions()) == 4 * 4 * 64


@pytest.mark.parametrize(
    ("options", "world", "fused"),
    [
        (RECIPE, 1, True),
        ({}, 1, True),
        ({**RECIPE, "fisher_at": "base"}, 1, False),  # the backward stream runs another model's blocks
        ({"compensation": "none"}, 1, False),  # no Hessians needed
        ({"selection": "random"}, 1, False),  # no Fisher pass to ride on
        (RECIPE, 2, False),  # ranks would have to agree on which parts each holds
    ],
)
def test_when_the_hessians_are_fused(options, world, fused):
    assert fuses_hessians(PatchOptions(**options), [BLOCK], world) is fused


def test_above_the_size_limit_the_hessians_get_their_own_pass(monkeypatch):
    monkeypatch.setattr(hessian, "FUSE_LIMIT_BYTES", fused_hessian_bytes([BLOCK], PatchOptions(**RECIPE)) - 1)
    assert not fuses_hessians(PatchOptions(**RECIPE), [BLOCK], 1)


@pytest.mark.parametrize(
    "options",
    [
        RECIPE,
        {},  # exact compensation on D_hon then D_task summed into one Hessian
        {"compensation": "summed", "hessian_data": "hon"},
        {"compensation": "protect", "r_iw": 0.25, "r_cw": 1.0},  # down projections selected: read + computed
        {"neuron": "row", "compensation": "protect"},
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_hessians_give_the_same_patch_as_their_own_pass(
    tiny_pair, calib, tmp_path, monkeypatch, caplog, options, dtype
):
    base, sft, _ = tiny_pair
    hon, task = calib
    opts, compute = PatchOptions(**options), ComputeOptions(device="cpu", dtype=dtype)
    collected: list[list[str]] = []
    real_collect = hessian._collect

    def spy(module, streams, block, layers, reduce):
        collected.append([layer.weight for layer in layers])
        return real_collect(module, streams, block, layers, reduce)

    monkeypatch.setattr(hessian, "_collect", spy)
    with caplog.at_level(logging.INFO, logger="surgery.hcnr.pipeline"):
        make_patch(str(sft), str(base), hon, task, tmp_path / "fused.safetensors", opts, compute=compute)
    assert "summing the narrow-input layers' Hessians during the Fisher pass" in caplog.text
    narrow = {layer.weight for block in _blocks(sft) for layer in fused_layers(block)}
    fused_collects = list(collected)
    assert all(w not in narrow for layers in fused_collects for w in layers)  # only wider layers got a pass
    collected.clear()

    monkeypatch.setattr(hessian, "FUSE_LIMIT_BYTES", -1)
    make_patch(str(sft), str(base), hon, task, tmp_path / "own.safetensors", opts, compute=compute)
    assert collected and any(w in narrow for layers in collected for w in layers)
    _same_patch(tmp_path / "fused.safetensors", tmp_path / "own.safetensors")


def test_a_resumed_run_without_the_fused_parts_computes_them_and_gets_the_same_bytes(tiny_pair, calib, tmp_path):
    """Fisher sums on disk but no Hessian parts (a run killed after the Fisher pass, or whose parts were used):
    the compensation sums those Hessians itself."""
    base, sft, _ = tiny_pair
    hon, task = calib
    opts = PatchOptions(**RECIPE)
    ref = tmp_path / "ref.safetensors"
    make_patch(str(sft), str(base), hon, task, ref, opts)
    out = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, out, opts, compute=ComputeOptions(keep_work=True))
    work = tmp_path / "p.safetensors.work"
    assert (work / "fisher").is_dir()
    assert not list((work / "hessians").glob("*.safetensors"))  # each block's was deleted once its part was solved
    shutil.rmtree(work / "patch")
    out.unlink()
    report = make_patch(str(sft), str(base), hon, task, out, opts)
    assert any("Fisher sums" in r for r in report.reused)
    _same_patch(ref, out)


def _blocks(model_folder) -> list[Block]:
    from surgery.hcnr.skeleton import ModelSkeleton
    from surgery.modelio import locate, open_checkpoint

    src = locate(str(model_folder))
    return ModelSkeleton(src, open_checkpoint(src), torch.float32, torch.device("cpu"), False).blocks


def test_the_plan_counts_the_fused_hessians_on_disk(tiny_pair, calib, monkeypatch):
    from surgery.hcnr.pipeline import plan_patch

    base, sft, _ = tiny_pair
    opts = PatchOptions(**RECIPE)
    fused = plan_patch(str(sft), str(base), *calib, opts)
    monkeypatch.setattr(hessian, "FUSE_LIMIT_BYTES", -1)
    own = plan_patch(str(sft), str(base), *calib, opts)
    assert fused.disk_bytes - own.disk_bytes == fused_hessian_bytes(_blocks(sft), opts) > 0
