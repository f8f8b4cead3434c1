"""Pair building blocks on a tiny model: merged folders are cached by adapter hash, and the
adapter form loads through modelio exactly like the merged folder."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from surgery.pair import build as B
from surgery.pair.train import save_adapter, train_lora


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
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_recipe_records_every_hyper_parameter():
    recipe = B.load_recipe()
    for stage in ("m0", "m1"):
        assert set(recipe[stage]["lora"]) == {"r", "alpha", "lr", "epochs", "batch_size", "max_length", "seed",
                                              "target_modules"}
        assert recipe[stage]["storage_dtype"] in B.DTYPES
    lock = B.load_lock()
    for stage in ("m0", "m1"):
        assert (B.RECIPE_DIR / recipe[stage]["adapter"] / "adapter_model.safetensors").is_file()
        from surgery.modelio import file_sha256

        assert file_sha256(B.RECIPE_DIR / recipe[stage]["adapter"] / "adapter_model.safetensors") == \
            lock[stage]["adapter_sha256"]
        assert len(lock[stage]["data_sha256"]) == 64


def test_calib_command_on_a_tiny_model(tiny_models, tmp_path, shared_data):
    from surgery.cli import main

    res = CliRunner().invoke(main, ["-q", "calib", "-o", str(tmp_path / "c"), "--model", str(tiny_models("llama")),
                                    "--n-hon", "8", "--n-task", "4", "--probe", "4", "--data-dir", str(shared_data)])
    assert res.exit_code == 0, res.output
    assert "D_hon" in res.output and "D_task" in res.output
    assert len((tmp_path / "c" / "d_hon.jsonl").read_text().splitlines()) == 8
    bad = CliRunner().invoke(main, ["calib", "-o", str(tmp_path / "d"), "--n-hon", "1"])
    assert bad.exit_code == 2 and "at least" in bad.output
