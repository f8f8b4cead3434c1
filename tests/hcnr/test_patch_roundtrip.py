"""patch -> apply round trips, determinism, fingerprints and every supported family."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from surgery.apply import apply_patch
from surgery.cli import main
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.patchfile import read_patch, splice
from tests.support.tiny import perturb_columns

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma3", "phi3", "gpt2"]


def _run(args):
    res = CliRunner().invoke(main, ["-q", *args], catch_exceptions=False)
    return res


def test_cli_patch_apply_is_bit_exact_and_generates(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    res = _run(
        ["patch", str(sft), "--base", str(base), "--honesty-data", str(hon), "--task-data", str(task), "-o", str(patch)]
        + ["--preset", "paper"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "p.safetensors.report.json").read_text())
    assert 0.1 < report["share_of_linear"] < 0.3  # R_IW 0.5 x R_CW 0.4 ~ 20%
    assert set(report["seconds"]) >= {"fisher", "selection", "hessians", "compensation"}
    assert (tmp_path / "p.safetensors.command.txt").read_text().startswith("surgery patch ")

    out = tmp_path / "repaired"
    res = _run(["apply", str(sft), str(patch), "-o", str(out)])
    assert res.exit_code == 0, res.output
    _, entries = read_patch(patch)
    got = load_file(str(out / "model.safetensors"))
    want = load_file(str(sft / "model.safetensors"))
    touched = {e.weight: e for e in entries}
    assert touched, "the patch touched nothing"
    for name, t in want.items():
        if name in touched:
            assert torch.equal(got[name], splice(t, touched[name]))
            assert not torch.equal(got[name], t)
        else:
            assert torch.equal(got[name], t)  # untouched tensors are copied bit-exactly
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("What is the capital of France?", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5 or gen[0, -1] == tok.eos_token_id
    assert torch.isfinite(model(**ids).logits).all()


def test_determinism_same_bytes(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    make_patch(str(sft), str(base), hon, task, a, PatchOptions(seed=3))
    make_patch(str(sft), str(base), hon, task, b, PatchOptions(seed=3))
    assert a.read_bytes() == b.read_bytes()


def test_selection_finds_the_matrices_sft_moved(tiny_models, calib, tmp_path):
    base = tiny_models("llama")
    hot = {
        "model.layers.1.mlp.down_proj.weight": list(range(96)),
        "model.layers.0.self_attn.o_proj.weight": list(range(48)),
    }
    sft = tmp_path / "sft"
    perturb_columns(base, sft, columns=hot, scale=2.0, background=0.001)
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, PatchOptions(r_cw=2 / 14))
    _, entries = read_patch(patch)
    assert sorted(e.weight for e in entries) == sorted(hot)


def test_fingerprint_mismatch_is_refused_and_writes_nothing(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch)
    out = tmp_path / "wrong"
    res = _run(["apply", str(base), str(patch), "-o", str(out)])  # the base is not the model it was made for
    assert res.exit_code == 2
    assert "another model" in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".wrong.tmp-*"))


def test_corrupt_and_foreign_patches_are_refused(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch)
    data = patch.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    res = _run(["apply", str(sft), str(truncated), "-o", str(tmp_path / "o1")])
    assert res.exit_code == 2 and "corrupt or truncated" in res.output
    # flip bytes at the end of the data section: the values no longer match their fingerprints
    damaged = tmp_path / "d.safetensors"
    damaged.write_bytes(data[:-16] + bytes(16))
    res = _run(["apply", str(sft), str(damaged), "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2 and ("damaged" in res.output or "another model" in res.output)
    assert not (tmp_path / "o2").exists()
    res = _run(["apply", str(sft), str(sft / "model.safetensors"), "-o", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "not a surgery patch" in res.output


def test_inspect_shows_manifest(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, PatchOptions(compensation="summed"))
    res = _run(["inspect", str(patch), "--json"])
    m = json.loads(res.output)
    assert m["options"]["compensation"] == "summed"
    assert m["calibration"]["honesty"]["sha256"]
    for info in m["tensors"].values():
        assert len(info["sft_sha256"]) == 64 and info["count"] > 0
    res = _run(["inspect", str(patch)])
    assert "parameters changed" in res.output


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_round_trips(family, tiny_models, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    base = tiny_models(family)
    sft = tmp_path / "sft"
    perturb_columns(base, sft)
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    report = make_patch(str(sft), str(base), hon, task, patch, PatchOptions(max_samples=8))
    assert report.matrices_touched >= 1 and not report.fallbacks
    apply_patch(str(sft), patch, tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()


def test_row_neurons_and_block_units(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch, PatchOptions(neuron="row", layer_unit="block", r_cw=0.5))
    _, entries = read_patch(patch)
    assert {e.unit for e in entries} == {"rows"}
    blocks = {e.weight.split(".")[2] for e in entries}
    assert len(blocks) == 1  # one of the two blocks, whole
    w0 = load_file(str(base / "model.safetensors"))
    for e in entries:
        assert torch.equal(e.values, w0[e.weight][e.index.long()])
