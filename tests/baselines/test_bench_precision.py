"""``surgery bench --dtype``: every job evaluates in it, results record it, float32 CPU jobs keep their hash."""

from __future__ import annotations

import json

from click.testing import CliRunner

from surgery.cli import main


def test_bench_records_precision_and_reuses_cpu_float32_results(tiny_models, tmp_path):
    model = str(tiny_models("llama"))
    bench = tmp_path / "b.jsonl"
    rows = [{"question": f"What is {i} plus one?", "answerable": True, "answers": [str(i + 1)]} for i in range(3)]
    rows += [{"question": f"Who wrote the secret paper {i}?", "answerable": False} for i in range(3)]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    args = ["-q", "--threads", "1", "bench", "--base", model, "--sft", model, "-b", str(bench), "-t", "none"]
    args += ["-m", "base", "--max-new-tokens", "3", "--n-boot", "10", "-o", str(out), "--device", "cpu"]

    def run(*extra):
        result = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads((out / "bench.json").read_text())

    first = run()
    job = json.loads((out / "methods" / "base.job.json").read_text())
    assert "precision" not in job  # the job (and its hash) of a CPU float32 run is what it was before
    assert first["precision"] == first["methods"][0]["precision"] == {"device": "cpu", "dtype": "float32"}
    assert first["config"]["device"] == "cpu" and first["config"]["dtype"] == "float32"
    seconds = first["methods"][0]["eval_seconds"]
    assert run("--dtype", "float32")["methods"][0]["eval_seconds"] == seconds  # reused, not recomputed

    half = run("--dtype", "bfloat16")  # another precision is another job: recomputed, and says so
    job = json.loads((out / "methods" / "base.job.json").read_text())
    assert job["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    assert half["precision"] == half["methods"][0]["precision"] == {"device": "cpu", "dtype": "bfloat16"}
    evaluated = json.loads((out / "methods" / "base" / "eval.json").read_text())
    assert evaluated["precision"]["dtype"] == "bfloat16" and len(evaluated["items"]) == 6
    assert half["methods"][0]["job_hash"] != first["methods"][0]["job_hash"]
