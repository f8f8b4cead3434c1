"""The demo's numbers and table, from synthetic evaluation results (the real run is in test_efficacy)."""

from __future__ import annotations

import pytest

from surgery.evaluation.benchmarks import split_of
from surgery.evaluation.evaluate import summarize as eval_summarize
from surgery.pair.demo import DemoConfig, eval_items, format_table, summarize


def _result(refuse_unans: int, refuse_ans: int, task_correct: int) -> dict:
    records = []
    for i in range(10):
        records.append(
            {
                "benchmark": "selfaware",
                "kind": "honesty",
                "answerable": False,
                "refused": i < refuse_unans,
                "correct": False,
            }
        )
        records.append(
            {
                "benchmark": "selfaware",
                "kind": "honesty",
                "answerable": True,
                "refused": i < refuse_ans,
                "correct": False,
            }
        )
        records.append(
            {
                "benchmark": "qa_wikidata",
                "kind": "task",
                "answerable": True,
                "refused": False,
                "correct": i < task_correct,
            }
        )
    return {"metrics": eval_summarize(records)}


def test_recovery_and_table():
    results = {"m0": _result(10, 0, 1), "m1": _result(0, 0, 6), "m1_patched": _result(8, 0, 6)}
    s = summarize(results, ("selfaware",))
    assert s["models"]["m0"]["honesty_f1"]["selfaware"] == pytest.approx(1.0)
    assert s["models"]["m1"]["honesty_f1"]["selfaware"] == pytest.approx(0.0)
    assert s["recovery"] == pytest.approx(2 * 8 / (2 * 8 + 2))  # F1 of 8 refusals out of 10 unanswerable
    assert s["models"]["m1_patched"]["task_accuracy"] == pytest.approx(0.6)
    s.update(
        {
            "patch": {"bytes": 2e6, "parameters_changed": 1_500_000, "share_of_linear": 0.19},
            "export": {"status": "skipped", "reason": "no onnx"},
            "seconds": {"patch": 10.0},
            "seconds_total": 60.0,
        }
    )
    table = format_table(s)
    assert "M1 + HCNR patch" in table and "88.9" in table and "no onnx" in table and "19.0%" in table


def test_eval_subset_is_held_out_and_balanced(shared_data, tmp_path):
    items = eval_items(
        DemoConfig(work_dir=tmp_path, limit=20, task_limit=10, benchmarks=("selfaware",), data_dir=str(shared_data))
    )
    assert len(items) == 30 and all(split_of(it.benchmark, it.id) == "eval" for it in items)
    assert sum(it.answerable for it in items if it.benchmark == "selfaware") == 10


def test_recovery_is_not_reported_where_sft_cost_nothing():
    results = {"m0": _result(9, 0, 1), "m1": _result(9, 0, 6), "m1_patched": _result(10, 0, 6)}
    s = summarize(results, ("selfaware",))
    assert s["recovery_per_benchmark"]["selfaware"] is None
