"""Where models come from: folders, the offline hub cache, PEFT adapters, pickle refusal, `check`."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.errors import SurgeryError
from surgery.modelio import locate, resolve_model_dir


def _run(args):
    return CliRunner().invoke(main, ["-q", *args], catch_exceptions=False)


def test_check_reports_where_sft_moved(tiny_pair, tmp_path):
    base, sft, moved = tiny_pair
    res = _run(["check", str(sft), "--base", str(base), "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["linear_matrices"] == len(moved) == rep["moved_matrices"]
    assert "most moved" in res.output


def test_check_refuses_mismatched_architectures(tiny_models):
    res = _run(["check", str(tiny_models("qwen2")), "--base", str(tiny_models("llama"))])
    assert res.exit_code == 2
    assert "not the same architecture" in res.output and "Traceback" not in res.output


def test_check_on_identical_models_says_nothing_to_restore(tiny_models):
    m = str(tiny_models("llama"))
    res = _run(["check", m, "--base", m])
    assert res.exit_code == 1 and "nothing to restore" in res.output


def test_pickle_only_folder_is_refused(tiny_models, tmp_path):
    from safetensors.torch import load_file

    src = tiny_models("llama")
    d = tmp_path / "pickled"
    shutil.copytree(src, d)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    res = _run(["check", str(d), "--base", str(src)])
    assert res.exit_code == 2 and "pickle" in res.output and "--allow-pickle" in res.output
    res = _run(["check", str(d), "--base", str(src), "--allow-pickle"])
    assert res.exit_code == 1  # loads now; identical weights -> nothing to restore


def test_missing_model_is_one_sentence(tmp_path):
    res = _run(["check", str(tmp_path / "nope"), "--base", "org/not-cached"])
    assert res.exit_code == 2 and "local cache" in res.output


def test_hub_id_resolves_from_offline_cache(tiny_models, tmp_path, monkeypatch):
    src = tiny_models("llama")
    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(src, snap)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_dir("acme/tiny") == snap
    with pytest.raises(SurgeryError):
        resolve_model_dir("acme/absent")


@pytest.fixture(scope="module")
def lora_sft(tiny_models, tmp_path_factory):
    """A PEFT LoRA adapter (random, non-zero B) on the tiny Llama: an SFT model users ship as an adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_models("llama")
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    out = tmp_path_factory.mktemp("adapter") / "sft-lora"
    peft_model.save_pretrained(out)
    cfg_path = out / "adapter_config.json"
    data = json.loads(cfg_path.read_text())
    data["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(data))
    return base, out


def test_adapter_is_merged_and_patched(lora_sft, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    base, adapter = lora_sft
    src = locate(str(adapter))
    assert src.adapter_base == base
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    res = _run(
        ["patch", str(adapter), "--honesty-data", str(hon), "--task-data", str(task), "-o", str(patch), "--r-cw", "0.5"]
    )
    assert res.exit_code == 0, res.output
    touched = json.loads(_run(["inspect", str(patch), "--json"]).output)["tensors"]
    # only matrices the adapter changed can have moved; the others have zero perturbation
    assert touched, "the patch touched nothing"
    assert all(any(t in name for t in ("q_proj", "v_proj", "down_proj")) for name in touched)
    out = tmp_path / "repaired"
    res = _run(["apply", str(adapter), str(patch), "-o", str(out)])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
    res = _run(["check", str(adapter), "--base", str(base)])
    assert res.exit_code == 0 and "moved matrices    6 / 14" in res.output
