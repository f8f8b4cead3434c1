"""``surgery eval --device/--dtype`` on a tiny model (CPU): float32 numbers unchanged, bfloat16 runs and is recorded."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from surgery.cli import main
from surgery.evaluation.benchmarks import load_items
from surgery.evaluation.evaluate import evaluate, load_json
from surgery.evaluation.runner import torch_generator

ARGS = ("-b", "selfaware", "-b", "qa_wikidata", "--limit", "6", "--max-new-tokens", "6", "--batch-size", "4")


@pytest.fixture(scope="module")
def runs(tiny_models, shared_data, tmp_path_factory):
    """The same evaluation without the options, with ``--device cpu --dtype float32``, and in bfloat16."""
    out = tmp_path_factory.mktemp("precision")
    model = str(tiny_models("llama"))
    records = {}
    for name, extra in (
        ("plain", ()),
        ("float32", ("--device", "cpu", "--dtype", "float32")),
        ("bfloat16", ("--device", "cpu", "--dtype", "bfloat16")),
    ):
        args = ["-q", "--threads", "1", "eval", model, *ARGS, "--data-dir", str(shared_data), *extra]
        result = CliRunner().invoke(main, [*args, "--json", str(out / f"{name}.json")], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        records[name] = load_json(out / f"{name}.json")
        records[name]["stdout"] = result.output
    return records


def test_cpu_float32_is_todays_evaluation(runs, tiny_models, shared_data):
    if not torch.cuda.is_available():  # "auto" is the CPU here
        assert runs["plain"]["precision"] == {"device": "cpu", "dtype": "float32"}
        assert runs["plain"]["items"] == runs["float32"]["items"]
        assert runs["plain"]["metrics"] == runs["float32"]["metrics"]
    # the generator as it was built before --device/--dtype existed gives the same responses
    items = []
    for b in ("selfaware", "qa_wikidata"):
        items += load_items(b, data_dir=str(shared_data), split="eval", limit=6, seed=0)
    before = evaluate(torch_generator(str(tiny_models("llama")), batch_size=4), items, max_new_tokens=6)
    assert [r["response"] for r in before["items"]] == [r["response"] for r in runs["float32"]["items"]]
    assert before["metrics"] == runs["float32"]["metrics"]


def test_bfloat16_runs_and_is_recorded(runs):
    record = runs["bfloat16"]
    assert record["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    assert runs["float32"]["precision"] == {"device": "cpu", "dtype": "float32"}
    assert [r["id"] for r in record["items"]] == [r["id"] for r in runs["float32"]["items"]]
    assert all(isinstance(r["response"], str) for r in record["items"])
    assert "on cpu, bfloat16" in record["stdout"] and "on cpu, float32" in runs["float32"]["stdout"]


def test_the_generator_loads_in_the_dtype_and_keeps_batches_on_the_model_device(tiny_models):
    gen = torch_generator(str(tiny_models("llama")), batch_size=2, dtype=torch.bfloat16, device="cpu")
    assert next(gen.model.parameters()).dtype is torch.bfloat16
    seen = []
    real = gen.model.generate
    gen.model.generate = lambda **kw: seen.append(kw["input_ids"].device) or real(**kw)
    assert len(gen.generate(["Who are you?", "Why?", "What?"], 3)) == 3
    assert seen == [torch.device("cpu")] * 2


def test_onnx_back_end_takes_neither_option(tiny_models, tmp_path):
    from tests.support.faults import assert_refused

    model = tiny_models("llama")
    out = tmp_path / "r.json"
    assert_refused(
        ["eval", str(model), "--backend", "onnx", "--dtype", "bfloat16", "--json", str(out)],
        [model],
        out,
        words=("apply to the torch back-end only",),
    )
