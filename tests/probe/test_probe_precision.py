"""``surgery probe --device/--dtype`` on tiny models (CPU): float32 unchanged, bfloat16 close and recorded."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.modelio import load_model, load_tokenizer
from surgery.probe.hidden_states import prompt_states


def write_benchmark(path):
    """20 answerable and 20 unanswerable questions, worded apart (the probes have something to find)."""
    rows = [
        {"question": f"What is the capital of France {i}?", "answerable": True, "answers": ["Paris"]} for i in range(20)
    ]
    rows += [{"question": f"Who wrote the unknown paper {i} in secret?", "answerable": False} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PROMPTS = ["What is the capital of France?", "Who wrote the unknown paper?", "How many legs does a spider have?"]


def test_bfloat16_states_are_the_float32_states_to_bf16_precision(tiny_models):
    path = str(tiny_models("llama"))
    tok = load_tokenizer(path)
    full = prompt_states(load_model(path, dtype=torch.float32), tok, PROMPTS, batch_size=2)
    before = prompt_states(load_model(path), tok, PROMPTS, batch_size=2)  # the checkpoint's dtype, as before
    np.testing.assert_array_equal(before, full)
    half = prompt_states(load_model(path, dtype=torch.bfloat16), tok, PROMPTS, batch_size=2)
    assert half.dtype == np.float32 and half.shape == full.shape
    assert not np.array_equal(half, full)  # really computed in bf16
    rel = np.linalg.norm(half - full, axis=-1) / np.linalg.norm(full, axis=-1)
    assert rel.max() < 0.05, rel.max()


def _probe(base, bench, out, *extra):
    args = ["-q", "--threads", "1", "probe", str(base), "--base", str(base), "--benchmark", str(bench)]
    result = CliRunner().invoke(main, [*args, "--limit", "40", "--json", str(out), *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_probe_records_the_precision_and_float32_is_unchanged(tiny_models, tmp_path):
    base = tiny_models("llama")
    bench = write_benchmark(tmp_path / "user.jsonl")
    plain, _ = _probe(base, bench, tmp_path / "plain.json", "--device", "cpu")
    f32, out32 = _probe(base, bench, tmp_path / "f32.json", "--device", "cpu", "--dtype", "float32")
    bf16, out16 = _probe(base, bench, tmp_path / "bf16.json", "--device", "cpu", "--dtype", "bfloat16")
    assert plain["precision"] == f32["precision"] == {"device": "cpu", "dtype": "float32"}
    assert bf16["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    assert plain["auroc"] == f32["auroc"]
    assert "on cpu, bfloat16" in out16 and "on cpu, float32" in out32
    assert len(bf16["auroc"]["base"]) == len(f32["auroc"]["base"])
    assert all(0.0 <= a <= 1.0 for a in bf16["auroc"]["transfer"])
