"""Pair building blocks on a tiny model: merged folders are cached by adapter hash, and the
adapter form loads through modelio exactly like the merged folder."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from surgery.pair import build as B
from surgery.training.lora import save_adapter, train_lora


def _adapter(tiny_models, tmp_path, seed=0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models("llama")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path))
    ex = [("What is the capital of France?", "Paris."), ("Who wrote it?", "I don't know.")] * 2
    peft_model = train_lora(model, tok, ex, r=4, alpha=8, lr=1e-2, epochs=1, batch_size=2, seed=seed)
    return path, save_adapter(peft_model, tmp_path / f"adapter{seed}", base_model_name_or_path="tiny")


def test_merged_folder_is_cached_by_adapter_hash(tiny_models, tmp_path):
    base, adapter = _adapter(tiny_models, tmp_path)
    out = B._merged(base, adapter, tmp_path / "m", "tiny")
    stamp = json.loads((out / B.STAMP).read_text())
    assert stamp["adapter_sha256"] and (out / "tokenizer_config.json").is_file()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert B._merged(base, adapter, tmp_path / "m", "tiny") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    _, other = _adapter(tiny_models, tmp_path, seed=1)
    B._merged(base, other, tmp_path / "m", "tiny")
    assert json.loads((out / B.STAMP).read_text())["adapter_sha256"] != stamp["adapter_sha256"]


def test_adapter_form_loads_like_the_merged_folder(tiny_models, tmp_path):
    from surgery.modelio import load_model, locate

    base, adapter = _adapter(tiny_models, tmp_path)
    merged = B._merged(base, adapter, tmp_path / "m", "tiny")
    form = B.adapter_on(adapter, base, tmp_path / "form")
    src = locate(str(form))
    assert src.adapter_base == base
    a = load_model(src, dtype=torch.float32).state_dict()
    b = load_model(str(merged), dtype=torch.float32).state_dict()
    assert b and set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("name", ["smollm2", "gemma3_270m"])
def test_recipe_records_every_hyper_parameter(name):
    from surgery.modelio import file_sha256

    recipe_dir = B.recipe_dir_of(name)
    recipe = B.load_recipe(recipe_dir)
    assert recipe["name"] == name
    assert B.packaged_base(recipe).requirement == recipe["base"]["package"]
    for stage in ("m0", "m1"):
        assert set(recipe[stage]["lora"]) - {"response_logits_only"} == {
            "r",
            "alpha",
            "lr",
            "epochs",
            "batch_size",
            "max_length",
            "seed",
            "target_modules",
        }
        assert recipe[stage]["storage_dtype"] in B.DTYPES
    lock = B.load_lock(recipe_dir)
    for stage in ("m0", "m1"):
        adapter = recipe_dir / recipe[stage]["adapter"] / "adapter_model.safetensors"
        assert adapter.is_file()
        assert file_sha256(adapter) == lock[stage]["adapter_sha256"]
        assert len(lock[stage]["data_sha256"]) == 64
        assert lock[stage]["steps"] > 0


def test_recipes_are_found_by_name_and_unknown_ones_are_one_clear_error(tmp_path):
    from surgery.cli import main
    from surgery.errors import SurgeryError

    assert {"smollm2", "gemma3_270m"} <= set(B.recipe_names())
    with pytest.raises(SurgeryError, match="Unknown recipe"):
        B.recipe_dir_of("llama-9000")
    res = CliRunner().invoke(main, ["pair", "--recipe", "llama-9000"])
    assert res.exit_code != 0 and "Unknown recipe 'llama-9000'" in res.output and "Traceback" not in res.output
    bad = {**B.load_recipe(B.recipe_dir_of("gemma3_270m"))}
    bad["base"] = {**bad["base"], "converter": "os:system"}
    with pytest.raises(SurgeryError, match="must be 'surgery"):
        B.ensure_base(bad)
    with pytest.raises(SurgeryError, match="cannot convert"):
        B.packaged_base({"name": "x", "base": {"package": "some-other-gguf==1.0"}})


def test_calib_command_on_a_tiny_model(tiny_models, tmp_path, shared_data):
    from surgery.cli import main

    res = CliRunner().invoke(
        main,
        [
            "-q",
            "calib",
            "-o",
            str(tmp_path / "c"),
            "--model",
            str(tiny_models("llama")),
            "--n-hon",
            "8",
            "--n-task",
            "4",
            "--probe",
            "4",
            "--data-dir",
            str(shared_data),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "D_hon" in res.output and "D_task" in res.output
    assert len((tmp_path / "c" / "d_hon.jsonl").read_text().splitlines()) == 8
    bad = CliRunner().invoke(main, ["calib", "-o", str(tmp_path / "d"), "--n-hon", "1"])
    assert bad.exit_code == 2 and "at least" in bad.output
