"""``surgery convert --to peft``: the patch as a PEFT LoRA adapter whose merge into the SFT model reproduces
``surgery apply`` to float tolerance (Linear and GPT-2 Conv1D, column and row neurons, full and int8 patches)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from surgery.apply import apply_patch
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.patchfile import read_patch
from tests.support.faults import assert_one_error_line, cli
from tests.support.tiny import perturb_columns


def _merged(sft: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The SFT model with the adapter loaded by peft and merged, as a state dict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sft, torch_dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def _pair(tiny_models, tmp_path: Path, family: str) -> tuple[Path, Path]:
    base = tiny_models(family)
    sft = tmp_path / "sft"
    perturb_columns(base, sft)
    return base, sft


def _check_merge_reproduces_apply(sft: Path, patch: Path, adapter: Path, out: Path, atol: float) -> None:
    apply_patch(str(sft), patch, out)
    want = load_file(str(out / "model.safetensors"))
    got = _merged(sft, adapter)
    _, entries = read_patch(patch)
    touched = {e.weight for e in entries}
    for name, t in want.items():
        if name not in got:  # tied weights appear once in the file
            continue
        if name in touched:
            assert torch.allclose(got[name], t, atol=atol, rtol=0), (name, (got[name] - t).abs().max())
        else:
            assert torch.equal(got[name], t), name


@pytest.mark.parametrize(("family", "neuron"), [("llama", "column"), ("llama", "row"), ("gpt2", "column")])
def test_merging_the_adapter_reproduces_apply(tiny_models, calib, tmp_path, family, neuron):
    base, sft = _pair(tiny_models, tmp_path, family)
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, PatchOptions(max_samples=8, neuron=neuron))
    adapter = tmp_path / "adapter"
    res = cli("convert", str(patch), "--to", "peft", "--sft", str(sft), "-o", str(adapter))
    assert res.exit_code == 0, res.output
    assert "LoRA ranks" in res.output
    config = json.loads((adapter / "adapter_config.json").read_text())
    _, entries = read_patch(patch)
    ranks = {e.weight.removesuffix(".weight"): int(e.index.numel()) for e in entries}
    assert config["rank_pattern"] == ranks and config["alpha_pattern"] == ranks
    assert sorted(config["target_modules"]) == sorted(ranks)
    assert config["fan_in_fan_out"] is (family == "gpt2")
    assert json.loads((adapter / "surgery_peft.json").read_text())["ranks"] == ranks
    state = load_file(str(adapter / "adapter_model.safetensors"))
    assert len(state) == 2 * len(ranks)
    _check_merge_reproduces_apply(sft, patch, adapter, tmp_path / "applied", atol=1e-6)


def test_an_int8_patch_exports_without_the_sft_model(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "int8.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, PatchOptions(max_samples=8), encoding="int8")
    adapter = tmp_path / "adapter"
    res = cli("convert", str(patch), "--to", "peft", "-o", str(adapter))  # the delta is in the patch
    assert res.exit_code == 0, res.output
    assert json.loads((adapter / "surgery_peft.json").read_text())["encoding"] == "int8"
    _check_merge_reproduces_apply(sft, patch, adapter, tmp_path / "applied", atol=1e-6)


def test_a_full_patch_needs_the_sft_model_for_peft(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, PatchOptions(max_samples=8))
    adapter = tmp_path / "adapter"
    line = assert_one_error_line(cli("convert", str(patch), "--to", "peft", "-o", str(adapter)))
    assert "--sft" in line
    assert not adapter.exists() and not list(tmp_path.glob(".adapter.tmp-*"))
