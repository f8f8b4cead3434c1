"""ONNX export, int8, verification, the onnx eval back-end and deploy, on tiny models (CPU, offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("optimum.onnxruntime", reason="needs the [onnx] extra")
pytestmark = [
    pytest.mark.onnx,
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),  # the exporter traces; these are expected
    pytest.mark.filterwarnings("ignore:Exporting aten..index operator:UserWarning"),
]

#: every family tests.support.tiny builds; all of them export with optimum-onnx 0.1.0 on transformers 4.57.6
FAMILIES = ["llama", "qwen2", "gemma", "gemma3", "phi3", "qwen3", "mistral", "gpt2"]
QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote the paper about steganography?",
]


def _run(args):
    return CliRunner().invoke(main, ["-q", "--threads", "2", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported_llama(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "llama-onnx"
    res = _run(["export", str(tiny_models("llama")), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_export_verifies_and_generates_like_pytorch(family, tiny_models, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    src = tiny_models(family)
    out = tmp_path / "onnx"
    res = _run(["export", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "verification passed" in res.output
    report = json.loads((out / "verify.json").read_text())
    check = report["checks"]["onnx-fp32"]
    assert report["passed"] and check["passed"]
    assert check["max_abs_diff"] < 1e-4 and check["top1_agreement"] == 1.0
    assert check["greedy_equal_prompts"] == check["prompts"] == 8
    for name in ("tokenizer_config.json", "generation_config.json", "config.json", "export.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".onnx.tmp-*")), "the temporary export folder was left behind"

    # a device needs nothing but the folder: load it as it is and decode greedily
    ort = ORTModelForCausalLM.from_pretrained(out)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from surgery.prompting import encode_prompt

    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([encode_prompt(tok, QUESTIONS[0])])
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    want = AutoModelForCausalLM.from_pretrained(src).generate(ids, **kw)
    assert torch.equal(ort.generate(ids, **kw), want)


def test_int8_export_quantizes_and_is_judged_by_agreement(tiny_models, tmp_path):
    import onnx

    out = tmp_path / "int8"
    res = _run(["export", str(tiny_models("llama")), "-o", str(out), "--quantize", "int8", "--int8-method", "dynamic"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "export.json").read_text())
    assert record["quantize"] == "int8"
    # 2 blocks x (q, k, v, o, gate, up) + lm_head; the 2 down_proj stay fp32, attention MatMuls have no weight
    assert record["int8"]["matmuls_quantized"] == 13
    assert record["bytes"] < record["fp32_bytes"]
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops
    report = json.loads((out / "verify.json").read_text())
    assert set(report["checks"]) == {"onnx-fp32", "onnx-int8", "honesty"}  # exporter strictly, quantizer loosely
    assert report["checks"]["onnx-int8"]["thresholds"]["max_abs_diff"] is None
    assert report["checks"]["onnx-int8"]["max_abs_diff"] > report["checks"]["onnx-fp32"]["max_abs_diff"]
    assert report["passed"]


def _tamper(folder):
    """Add 0.5 to one column of the first block weight stored in the graph, as a corrupted copy would."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    init = next(i for i in model.graph.initializer if len(i.dims) == 2 and i.name.startswith("onnx::MatMul"))
    w = numpy_helper.to_array(init).copy()
    w[:, 0] += 0.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(folder / "model.onnx"))


def test_tampered_weight_file_fails_verification(exported_llama, tiny_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported_llama, broken)
    res = _run(["export", str(tiny_models("llama")), "-o", str(broken), "--verify-only"])
    assert res.exit_code == 0, res.output  # the untouched copy passes
    _tamper(broken)
    res = _run(["export", str(tiny_models("llama")), "-o", str(broken), "--verify-only"])
    assert res.exit_code == 2
    assert "ONNX verification failed" in res.output and "max-abs logit difference" in res.output
    assert "Traceback" not in res.output
    report = json.loads((broken / "verify.json").read_text())
    assert not report["passed"] and report["failures"]


def test_failed_verification_publishes_nothing(tiny_models, tmp_path):
    out = tmp_path / "strict"
    res = _run(["export", str(tiny_models("llama")), "-o", str(out), "--max-abs-diff", "0"])
    assert res.exit_code == 2 and "max-abs logit difference" in res.output
    assert not out.exists()
    rejected = tmp_path / "strict.rejected"
    assert not json.loads((rejected / "verify.json").read_text())["passed"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert rejected.stat().st_mode & 0o777 == 0o777 & ~umask  # readable like any output, not 0700
    assert not list(tmp_path.glob(".strict.tmp-*"))


def test_export_refuses_non_empty_output(exported_llama, tiny_models):
    res = _run(["export", str(tiny_models("llama")), "-o", str(exported_llama)])
    assert res.exit_code == 2 and "not empty" in res.output


def test_onnx_eval_backend_matches_torch(exported_llama, tiny_models, tmp_path):
    from surgery.evaluation.runner import make_generator
    from surgery.export.ort_backend import register

    register()
    # batch 2 over 3 prompts of different lengths: left padding goes through the ONNX KV-cache path too
    onnx_gen = make_generator("onnx", str(exported_llama), batch_size=2)
    torch_gen = make_generator("torch", str(tiny_models("llama")), batch_size=2)
    assert onnx_gen.name == "onnx"
    assert onnx_gen.generate(QUESTIONS, 12) == torch_gen.generate(QUESTIONS, 12)

    items = tmp_path / "items.jsonl"
    items.write_text(
        "".join(
            json.dumps({"id": str(i), "question": q, "answerable": i != 2, "answers": ["x"]}) + "\n"
            for i, q in enumerate(QUESTIONS)
        )
    )
    res = _run(
        [
            "eval",
            str(exported_llama),
            "--backend",
            "onnx",
            "--benchmark",
            str(items),
            "--max-new-tokens",
            "8",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["options"]["backend"] == "onnx"


def test_missing_extra_is_one_clear_sentence(monkeypatch, tiny_models, tmp_path):
    # simulate an install without optimum: importing it (or anything under it) fails
    for name in ("optimum", "optimum.onnxruntime", "optimum.exporters", "optimum.exporters.onnx"):
        monkeypatch.setitem(sys.modules, name, None)
    # the command module and the whole export package must import without the extra (fresh interpreter,
    # so this process keeps one copy of each module)
    blocked = (
        "import sys\nfor n in ('optimum', 'optimum.onnxruntime', 'optimum.exporters', 'onnx', 'onnxruntime'):\n"
        "    sys.modules[n] = None\n"
    )
    modules = (
        "surgery.commands.export",
        "surgery.export.onnx",
        "surgery.export.quantize",
        "surgery.export.verify",
        "surgery.export.pipeline",
        "surgery.export.ort_backend",
    )
    code = blocked + "".join(f"import {m}\n" for m in modules)
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    for args in (
        ["export", str(tiny_models("llama")), "-o", str(tmp_path / "o")],
        ["deploy", str(tiny_models("llama")), str(tiny_models("llama") / "config.json"), "-o", str(tmp_path / "o")],
    ):
        res = _run(args)
        assert res.exit_code == 2, res.output
        assert "pip install 'surgery-hcnr[onnx]'" in res.output and "Traceback" not in res.output
    from surgery.errors import MissingExtraError
    from surgery.evaluation.runner import make_generator
    from surgery.export.ort_backend import register

    register()
    with pytest.raises(MissingExtraError, match=r"surgery-hcnr\[onnx\]"):
        make_generator("onnx", str(tmp_path))
    assert not (tmp_path / "o").exists()


def test_deploy_equals_apply_then_export(tiny_pair, calib, tmp_path):
    from surgery.hcnr.pipeline import make_patch

    base, sft, _ = tiny_pair
    hon, task = calib
    patch = tmp_path / "p.safetensors"
    make_patch(str(sft), str(base), hon, task, patch)
    out = tmp_path / "deployed"
    res = _run(["deploy", str(sft), str(patch), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "verification passed" in res.output
    assert json.loads((out / "export.json").read_text())["source"] == f"{sft} + {patch}"
    assert not list(tmp_path.glob(".deployed.*")), "temporary folders were left behind"

    # the artefact is the patched model, not the SFT model it started from
    repaired = tmp_path / "repaired"
    assert _run(["apply", str(sft), str(patch), "-o", str(repaired)]).exit_code == 0
    assert _run(["export", str(repaired), "-o", str(out), "--verify-only"]).exit_code == 0
    res = _run(["export", str(sft), "-o", str(out), "--verify-only"])
    assert res.exit_code == 2 and "verification failed" in res.output


def test_int8_per_channel_gives_each_output_channel_its_own_weight_scale(tiny_models, tmp_path):
    """--int8-per-channel reaches onnxruntime: weight scales are vectors over the output channels, not scalars."""
    import onnx
    from onnx import numpy_helper

    def weight_scales(folder):
        model = onnx.load(str(folder / "model.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        nodes = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
        assert nodes
        # the weight's zero point feeds MatMulInteger; its scale is the initializer named like it
        shapes = []
        for n in nodes:
            w = n.input[1].removesuffix("_quantized")
            shapes.append(inits[w + "_scale"].shape)
        return shapes

    outs = {}
    for flag in ("--no-int8-per-channel", "--int8-per-channel"):
        out = tmp_path / flag
        res = _run(
            [
                "export",
                str(tiny_models("llama")),
                "-o",
                str(out),
                "--quantize",
                "int8",
                "--int8-method",
                "dynamic",
                flag,
            ]
        )
        assert res.exit_code == 0, res.output
        outs[flag] = out
        record = json.loads((out / "export.json").read_text())
        assert record["int8"]["per_channel"] is (flag == "--int8-per-channel")
    assert all(s == () for s in weight_scales(outs["--no-int8-per-channel"]))
    per_channel = weight_scales(outs["--int8-per-channel"])
    assert all(len(s) == 1 and s[0] > 1 for s in per_channel), per_channel


def test_int8_weight_only_uses_8_bit_blocks_everywhere_and_is_recognised(tiny_models, tmp_path):
    """--int8-method weight-only: 8-bit MatMulNBits on every weight MatMul (down_proj too), fp32 activations."""
    import onnx

    out = tmp_path / "int8w"
    args = ["export", str(tiny_models("llama")), "-o", str(out), "--quantize", "int8", "--block-size", "16"]
    res = _run([*args, "--honesty-prompts", "8"])  # weight-only is the default int8 method
    assert res.exit_code == 0, res.output
    record = json.loads((out / "export.json").read_text())
    assert record["quantize"] == "int8"
    assert (record["int8"]["int8_method"], record["int8"]["bits"], record["int8"]["matmuls_quantized"]) == (
        "weight-only",
        8,
        15,  # 2 blocks x 7 projections + lm_head: down_proj is not kept in fp32
    )
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 15 and all({a.name: a.i for a in n.attribute}["bits"] == 8 for n in nodes)
    # int8 compute by default (as fast as dynamic int8); fp32 compute dequantizes at every call
    assert record["int8"]["accuracy_level"] == 4
    assert all({a.name: a.i for a in n.attribute}["accuracy_level"] == 4 for n in nodes)
    assert not any(n.op_type == "MatMulInteger" for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert json.loads((out / "verify.json").read_text())["passed"]
    # without export.json the graph itself says int8 (8-bit MatMulNBits), not int4
    from surgery.export.onnx import export_precision

    (out / "export.json").unlink()
    assert export_precision(out) == "int8"
