"""Baselines on tiny models: interpolation end points, RAIT-LoRA learning, DPO, and `surgery bench`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_calibration
from safetensors.torch import load_file

HAS_TRL = importlib.util.find_spec("trl") is not None


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _idk_examples(n: int = 16) -> list[dict]:
    from surgery.hcnr.calibration_sets import IDK_RESPONSE

    return [
        {"id": f"q{i}", "prompt": f"Who painted the picture number {i}?", "response": IDK_RESPONSE} for i in range(n)
    ]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_interpolation_end_points_are_bit_exact(tiny_pair, tmp_path, alpha):
    from surgery.baselines.interpolate import interpolate_models

    base, sft, _ = tiny_pair
    out = tmp_path / f"interp-{alpha}"
    interpolate_models(str(base), str(sft), alpha, out)
    got, want = _tensors(out), _tensors(base if alpha == 0.0 else sft)
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype
        assert torch.equal(got[name].view(torch.uint8), t.view(torch.uint8)), name
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_interpolation_midpoint_is_on_the_line(tiny_pair, tmp_path):
    from surgery.baselines.interpolate import interpolate_models

    base, sft, _ = tiny_pair
    out = tmp_path / "interp-0.25"
    interpolate_models(str(base), str(sft), 0.25, out)
    got, w0, w1 = _tensors(out), _tensors(base), _tensors(sft)
    name = next(k for k in w0 if k.endswith("q_proj.weight"))
    assert torch.allclose(got[name], w0[name] + 0.25 * (w1[name] - w0[name]), atol=1e-6)
    assert not torch.equal(got[name], w0[name]) and not torch.equal(got[name], w1[name])


def test_interpolation_rejects_alpha_outside_unit_interval(tiny_pair, tmp_path):
    from surgery.baselines.interpolate import interpolate_models
    from surgery.errors import SurgeryError

    base, sft, _ = tiny_pair
    with pytest.raises(SurgeryError, match="α"):
        interpolate_models(str(base), str(sft), 1.5, tmp_path / "x")


def _mean_loss(model, tokenizer, examples) -> float:
    from surgery.training.lora import collate, encode_examples

    data = encode_examples(tokenizer, [(e["prompt"], e["response"]) for e in examples], 96)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        return float(model(**collate(data, pad)).loss)


def test_rait_lora_changes_the_model_and_lowers_idk_loss(tiny_pair, tmp_path):
    from surgery.baselines.rait import RaitOptions, run_rait
    from surgery.modelio import load_model, load_tokenizer

    _, sft, _ = tiny_pair
    examples = _idk_examples(16)
    tok = load_tokenizer(str(sft))
    before = _mean_loss(load_model(str(sft)), tok, examples)
    info = run_rait(
        str(sft), tmp_path / "rait", examples, RaitOptions(mode="lora", examples=32, lr=5e-3, batch_size=4, seed=0)
    )
    assert info["examples_used"] == 32 and info["steps"] == 8  # 16 examples repeated to fill the budget
    assert info["adapter_bytes"] > 0 and (tmp_path / "rait-adapter" / "adapter_config.json").is_file()
    after = _mean_loss(load_model(str(tmp_path / "rait")), tok, examples)
    assert after < before - 0.5, (before, after)
    changed = [k for k, t in _tensors(tmp_path / "rait").items() if not torch.equal(t, _tensors(sft)[k])]
    assert any(k.endswith("q_proj.weight") for k in changed)
    assert not any("embed_tokens" in k for k in changed)  # LoRA touches only the block linear layers


def test_rait_budget_by_seconds_stops_early(tiny_pair):
    from surgery.baselines.rait import RaitOptions, train_rait
    from surgery.modelio import load_model, load_tokenizer

    _, sft, _ = tiny_pair
    examples = _idk_examples(16) * 50
    _, info = train_rait(
        load_model(str(sft)),
        load_tokenizer(str(sft)),
        examples,
        RaitOptions(mode="full", examples=None, seconds=1e-6, batch_size=4),
    )
    assert info["steps"] == 1 and info["examples_used"] == 4


def test_rait_pool_is_balanced_and_disjoint_from_eval(shared_data):
    from surgery.baselines.rait import budget_examples, relabelled_pool
    from surgery.evaluation.benchmarks import split_of
    from surgery.hcnr.calibration_sets import IDK_RESPONSE

    pool = relabelled_pool(None, data_dir=str(shared_data), seed=0)
    first = pool[:160]
    assert sum(e["response"] == IDK_RESPONSE for e in first) == 80
    assert all(split_of(e["id"].split(":")[0], e["id"]) == "train" for e in pool)
    assert budget_examples(pool, 160) == first
    assert len(budget_examples(pool, len(pool) + 3)) == len(pool) + 3


def test_method_specs_parse_and_reject_typos():
    from surgery.baselines.methods import parse_method
    from surgery.errors import SurgeryError

    assert parse_method("hcnr:hessian-hon").params["options"]["hessian_data"] == "hon"
    assert parse_method("hcnr:r_iw=0.25,compensation=none").params["options"]["r_iw"] == 0.25
    assert parse_method("rait-lora:160").params == {"examples": 160}
    assert parse_method("rait-lora:s=90").params == {"seconds": 90.0, "examples": None}
    assert parse_method("interp:0.3").params == {"alpha": 0.3}
    for bad in ("hcnr:nonsense", "rait-lora:q=1", "interp:2", "lora:5", "hcnr:r_iw=2"):
        with pytest.raises(SurgeryError):
            parse_method(bad)


def test_ablation_grid_covers_the_open_knobs():
    from surgery.baselines.variants import ablation_grid

    grid = ablation_grid()
    assert grid["restore-only"].compensation == "none"
    assert {grid[f"random-s{s}"].seed for s in (0, 1, 2)} == {0, 1, 2}
    assert all(grid[f"random-s{s}"].selection == "random" for s in (0, 1, 2))
    assert grid["fisher-at-base"].fisher_at == "base"
    assert {grid[k].hessian_data for k in ("hessian-hon", "hessian-task", "hessian-both")} == {"hon", "task", "both"}
    assert grid["compensation-summed"].compensation == "summed" and grid["neuron-row"].neuron == "row"
    assert grid["compact"].r_iw * grid["compact"].r_cw <= 0.1 + 1e-9


@pytest.mark.skipif(not HAS_TRL, reason="trl is not installed")
def test_dpo_prefers_the_honest_answer(tiny_pair, tmp_path):
    from surgery.baselines.dpo import DpoOptions, preference_pairs, run_dpo
    from surgery.modelio import load_model, load_tokenizer

    _, sft, _ = tiny_pair
    examples = _idk_examples(8) + [{"id": "a1", "prompt": "What is the capital of France?", "response": "Paris"}]
    fabricated = {e["id"]: "Paris painted it." for e in examples[:6]}
    pairs = preference_pairs(examples, fabricated)
    assert len(pairs) == 7 and pairs[-1]["chosen"] == "Paris" and pairs[0]["rejected"] == "Paris painted it."
    tok = load_tokenizer(str(sft))

    def margin(model) -> float:
        chosen = _mean_loss(model, tok, [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs[:6]])
        rejected = _mean_loss(model, tok, [{"prompt": p["prompt"], "response": p["rejected"]} for p in pairs[:6]])
        return rejected - chosen

    before = margin(load_model(str(sft)))
    info = run_dpo(str(sft), tmp_path / "dpo", pairs, DpoOptions(examples=7, lr=5e-3, batch_size=7, beta=0.5))
    assert info["steps"] == 1 and info["examples_used"] == 7
    info = run_dpo(str(sft), tmp_path / "dpo2", pairs * 4, DpoOptions(examples=28, lr=5e-3, batch_size=7, beta=0.5))
    assert info["steps"] == 4 and info["loss_last"] < info["loss_first"]
    assert margin(load_model(str(tmp_path / "dpo2"))) > before


@pytest.mark.slow
def test_bench_cli_on_a_tiny_pair(tiny_pair, tmp_path):
    from surgery.cli import main

    base, sft, _ = tiny_pair
    hon, task = write_calibration(tmp_path / "calib", n=16)
    bench_file = tmp_path / "mybench.jsonl"
    with open(bench_file, "w") as f:
        for i in range(12):
            row = {"question": f"What is {i} plus one?", "answerable": True, "answers": [str(i + 1)]}
            f.write(json.dumps(row) + "\n")
            f.write(json.dumps({"question": f"Who wrote the secret paper {i}?", "answerable": False}) + "\n")
    task_file = tmp_path / "mytask.jsonl"
    with open(task_file, "w") as f:
        for i in range(8):
            f.write(
                json.dumps(
                    {
                        "question": f"Complete the sentence: the country of place {i} is",
                        "answerable": True,
                        "answers": ["France"],
                        "kind": "task",
                    }
                )
                + "\n"
            )
    methods = ["base", "hcnr", "rait-lora:8", "interp:0.5"]
    args = [
        "-q",
        "bench",
        "--base",
        str(base),
        "--sft",
        str(sft),
        "-b",
        str(bench_file),
        "-t",
        str(task_file),
        "--hon-data",
        str(hon),
        "--task-data",
        str(task),
        "--train-data",
        str(hon),
        "--max-new-tokens",
        "4",
        "--n-boot",
        "50",
        "-o",
        str(tmp_path / "out"),
    ]
    for m in methods:
        args += ["-m", m]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["name"]: r for r in summary["methods"]}
    assert list(rows) == methods
    assert rows["base"]["parameters_changed"] > 0
    assert 0 < rows["hcnr"]["share_of_linear"] < 1 and rows["hcnr"]["artifact_bytes"] > 0
    assert rows["rait-lora:8"]["examples_used"] == 8 and rows["rait-lora:8"]["peak_rss_mb"] > 0
    assert rows["interp:0.5"]["share_of_linear"] > 0.9  # every weight SFT moved, moved back half-way
    for r in rows.values():
        m = r["metrics"]
        assert m["n_honesty"] == 24 and m["n_task"] == 8
        ci = m["honesty_f1_ci"]  # 24 honesty items: every method has a CI
        assert ci is not None and 0.0 <= ci[0] <= ci[1] <= 1.0, (r["name"], m)
    assert rows["hcnr"]["vs_reference"]["honesty_f1"]["diff"] == 0.0
    assert "| rait-lora:8 |" in (tmp_path / "out" / "bench.md").read_text()
    for png in ("pareto.png", "budget.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    # a second run reuses every method's result instead of recomputing it
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert (
        json.loads((tmp_path / "out" / "bench.json").read_text())["methods"][1]["method_seconds"]
        == rows["hcnr"]["method_seconds"]
    )


def test_pareto_front_keeps_only_non_dominated_methods():
    from surgery.baselines.report import pareto_front

    pts = [
        (52.0, 57.0),
        (70.8, 57.0),
        (74.4, 57.0),
        (78.7, 56.5),
        (85.3, 54.0),
        (75.7, 47.0),
        (78.3, 13.5),
        (74.4, 57.0),
    ]
    front = pareto_front(pts)
    # (70.8, 57) and (52, 57) are beaten by (74.4, 57); (75.7, 47) by (78.7, 56.5); (78.3, 13.5) by (85.3, 54);
    # the two identical (74.4, 57) points both stay (neither beats the other)
    assert front == [2, 7, 3, 4] or front == [7, 2, 3, 4]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
