"""int4 export (onnxruntime MatMulNBits) and honesty-aware scaling (--protect-honesty), on tiny models."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main

pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
pytestmark = [
    pytest.mark.onnx,
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:Exporting aten..index operator:UserWarning"),
]

#: families whose projections protect.py folds (separate q/k/v and gate/up; Gemma's 1 + weight norms, GQA)
FOLD_FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma3"]
HONESTY = ["--honesty-prompts", "8"]


def _run(args):
    return CliRunner().invoke(main, ["-q", "--threads", "2", *args], catch_exceptions=False)


def _quarter_columns(model) -> dict[str, torch.Tensor]:
    """The first quarter of the input columns of every block projection (what a patch would restore)."""
    pattern = re.compile(r"\.(self_attn|mlp)\.[a-z_]+_proj\.weight$")
    return {n: torch.arange(p.shape[1] // 4) for n, p in model.named_parameters() if pattern.search(n)}


@pytest.mark.parametrize("family", FOLD_FAMILIES)
def test_protection_scales_columns_and_keeps_the_float_model(family, tiny_models):
    from transformers import AutoModelForCausalLM

    from surgery.export.protect import fold_protection

    src = tiny_models(family)
    before = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    columns = _quarter_columns(model)
    record = fold_protection(model, columns, 2.0, "p")
    assert record.skipped == [] and record.matrices == 7 * 2  # q,k,v,gate,up + o + down in both blocks
    params, old = dict(model.named_parameters()), dict(before.named_parameters())
    q = next(n for n in columns if n.endswith("q_proj.weight"))
    cols = columns[q]
    assert torch.equal(params[q][:, cols], 2 * old[q][:, cols])  # the restored columns are scaled up ...
    assert torch.equal(params[q][:, len(cols) :], old[q][:, len(cols) :])  # ... and only those
    ids = torch.randint(0, before.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = before(ids).logits, model(ids).logits
    # powers of two fold exactly: the float model is unchanged up to the kernels' summation order
    assert (a - b).abs().max() < 1e-5


def test_protection_refuses_a_patch_of_another_model(tiny_models):
    from transformers import AutoModelForCausalLM

    from surgery.errors import SurgeryError
    from surgery.export.protect import fold_protection

    model = AutoModelForCausalLM.from_pretrained(tiny_models("llama"), dtype=torch.float32)
    with pytest.raises(SurgeryError, match="does not fit this model"):
        fold_protection(model, {"model.layers.0.self_attn.q_proj.weight": torch.tensor([0, 4096])}, 2.0, "p")


def test_int4_export_uses_matmulnbits_and_verifies(tiny_models, tmp_path):
    import onnx

    out = tmp_path / "int4"
    res = _run(
        ["export", str(tiny_models("llama")), "-o", str(out), "--quantize", "int4", "--block-size", "16", *HONESTY]
    )
    assert res.exit_code == 0, res.output
    record = json.loads((out / "export.json").read_text())
    assert record["quantize"] == "int4" and record["int4"]["block_size"] == 16
    # every MatMul with a constant weight: 2 blocks x 7 projections + lm_head (int4 is weight-only: down_proj too)
    assert record["int4"]["matmuls_quantized"] == 15
    assert record["bytes"] < 0.6 * record["fp32_bytes"]  # the fp32 embedding table stays
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops and "MatMulInteger" not in ops
    report = json.loads((out / "verify.json").read_text())
    assert set(report["checks"]) == {"onnx-fp32", "onnx-int4", "honesty"}
    assert report["checks"]["honesty"]["items"] == 8 and report["passed"]
    assert "honesty: F1" in res.output
    # --verify-only recognises the int4 graph and runs the honesty check again
    res = _run(["export", str(tiny_models("llama")), "-o", str(out), "--verify-only", *HONESTY])
    assert res.exit_code == 0, res.output
    assert set(json.loads((out / "verify.json").read_text())["checks"]) == {"onnx-int4", "honesty"}


def test_protected_int4_deploy_keeps_the_fp32_export_exact(tiny_pair, calib, tmp_path):
    from surgery.hcnr.pipeline import make_patch

    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch)
    out = tmp_path / "deployed"
    args = ["deploy", str(sft), str(patch), "-o", str(out), "--quantize", "int4", "--block-size", "16"]
    res = _run([*args, "--protect-honesty", str(patch), *HONESTY])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "export.json").read_text())
    protect = record["protect_honesty"]
    assert protect["scale"] == 2.0 and protect["matrices_scaled"] > 0 and protect["columns_scaled"] > 0
    report = json.loads((out / "verify.json").read_text())
    # the scaled model was exported, but checked against the unscaled one with the strict fp32 thresholds
    assert report["checks"]["onnx-fp32"]["passed"] and report["checks"]["onnx-fp32"]["max_abs_diff"] < 1e-4
    assert report["passed"]


def test_int4_keeps_the_named_matmuls_in_8bit_blocks(tiny_models, tmp_path):
    """--int4-keep-8bit: the named projections become 8-bit MatMulNBits (int8 compute), the rest 4-bit."""
    import onnx

    out = tmp_path / "mixed"
    args = ["export", str(tiny_models("llama")), "-o", str(out), "--quantize", "int4", "--block-size", "16"]
    res = _run([*args, *HONESTY])  # the default: down_proj and v_proj
    assert res.exit_code == 0, res.output
    record = json.loads((out / "export.json").read_text())
    assert record["quantize"] == "int4"
    int4 = record["int4"]
    assert (int4["kept_8bit_patterns"], int4["matmuls_8bit"], int4["matmuls_quantized"]) == (
        ["down_proj", "v_proj"],
        4,
        15,
    )
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in nodes}
    eight = sorted(name for name, a in attrs.items() if a["bits"] == 8)
    assert len(eight) == 4 and all("down_proj" in n or "v_proj" in n for n in eight)
    assert all(attrs[n].get("accuracy_level") == 4 for n in eight)
    assert sum(a["bits"] == 4 for a in attrs.values()) == 11
    report = json.loads((out / "verify.json").read_text())
    assert report["passed"] and set(report["checks"]) == {"onnx-fp32", "onnx-int4", "honesty"}
    # 'none': every MatMul in 4-bit blocks; a pattern of the user's replaces the default
    for keep, eight_bit in ((["none"], []), (["o_proj"], ["o_proj"] * 2)):
        out = tmp_path / keep[0]
        flags = [x for k in keep for x in ("--int4-keep-8bit", k)]
        assert _run([*args[:3], str(out), *args[4:], *flags, *HONESTY]).exit_code == 0
        nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
        bits8 = [n.name.split("/")[-2] for n in nodes if any(a.name == "bits" and a.i == 8 for a in n.attribute)]
        assert (len(nodes), bits8) == (15, eight_bit)
        assert json.loads((out / "export.json").read_text())["int4"]["kept_8bit_patterns"] == eight_bit[:1]


@pytest.mark.parametrize("method", ["rtn-asym"])
def test_int4_methods_with_zero_points_reach_onnxruntime(method, tiny_models, tmp_path):
    """--int4-method rtn-asym: every MatMulNBits gets a zero-point input (symmetric rtn has none)."""
    import onnx

    out = tmp_path / method
    args = ["export", str(tiny_models("llama")), "-o", str(out), "--quantize", "int4", "--block-size", "16"]
    res = _run([*args, "--int4-method", method, *HONESTY])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "export.json").read_text())["int4"]
    assert (record["int4_method"], record["symmetric"], record["matmuls_quantized"]) == (method, False, 15)
    assert record["algorithm"] == "round-to-nearest"
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 15 and all(len(n.input) >= 4 and n.input[3] for n in nodes)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--protect-honesty", "{patch}"], "add --quantize"),
        (["--quantize", "int4", "--block-size", "48"], "--block-size must be one of"),
        (["--quantize", "int4", "--int4-method", "hqq"], "--int4-method|hqq"),
        (["--quantize", "int4", "--int4-keep-8bit", "none", "--int4-keep-8bit", "v_proj"], "give it alone"),
        (["--quantize", "int4", "--protect-scale", "3"], "power of two"),
        (["--quantize", "int4", "--protect-scale", "1"], "power of two other than 1"),
        (["--quantize", "int4", "--protect-honesty", "{patch}"], "restores no input columns|not a|patch"),
    ],
)
def test_quantize_options_are_refused_in_one_sentence(extra, message, tiny_models, tmp_path):
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"not a patch")
    out = tmp_path / "o"
    res = _run(["export", str(tiny_models("llama")), "-o", str(out), *[a.format(patch=fake) for a in extra]])
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output) and "Traceback" not in res.output
    assert not out.exists()
