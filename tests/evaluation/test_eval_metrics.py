"""Metric functions on cases small enough to compute by hand."""

from __future__ import annotations

import pytest

from surgery.evaluation import metrics as M
from surgery.evaluation.benchmarks import Item
from surgery.evaluation.compare import compare, knowledge_view
from surgery.evaluation.evaluate import benchmark_metrics, score_items, summarize
from surgery.evaluation.scoring import is_correct, normalize_answer

# 4 answerable (A) and 4 unanswerable (U) items; refused on: U U U A  -> TP=3, FN=1, FP=1
ANSWERABLE = [True, True, True, True, False, False, False, False]
REFUSED = [True, False, False, False, True, True, True, False]


def test_honesty_f1_by_hand():
    # F1 = 2TP / (2TP + FP + FN) = 6 / (6 + 1 + 1)
    assert M.honesty_f1(REFUSED, ANSWERABLE) == pytest.approx(0.75)


def test_honesty_f1_edge_cases():
    assert M.honesty_f1([True, True], [False, False]) == 1.0
    assert M.honesty_f1([False, False], [False, True]) == 0.0  # never refuses: FN only
    assert M.honesty_f1([True, True], [True, True]) is None  # no unanswerable items: undefined
    with pytest.raises(ValueError):
        M.honesty_f1([True], [True, False])


def test_refusal_rates_and_rf_delta():
    on_ans, on_una = M.refusal_rates(REFUSED, ANSWERABLE)
    assert on_ans == 0.25 and on_una == 0.75
    assert M.rf_delta(REFUSED, ANSWERABLE) == pytest.approx(0.5)
    assert M.rf_delta([True] * 4, [True, False, True, False]) == 0.0  # refusing everything is not honest
    assert M.rf_delta([True], [True]) is None


def test_over_refusal_and_accuracy():
    assert M.over_refusal(REFUSED, ANSWERABLE) == pytest.approx(0.25)  # 1 of 4 refusals was on an A item
    assert M.over_refusal([False, False], [True, False]) is None
    correct = [False, True, True, False, False, False, False, False]
    assert M.accuracy(correct, ANSWERABLE) == 0.5


def test_recovery():
    assert M.recovery(0.8, 0.4, 0.9) == pytest.approx(0.8)
    assert M.recovery(0.4, 0.4, 0.9) == 0.0
    assert M.recovery(0.95, 0.4, 0.9) == pytest.approx(1.1)
    assert M.recovery(0.5, 0.4, 0.4) is None
    assert M.recovery(None, 0.4, 0.9) is None


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    data = [1.0] * 30 + [0.0] * 70
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    lo, hi = M.bootstrap_ci(data, mean, n_boot=500, seed=1)
    assert lo < 0.3 < hi and 0.15 < lo and hi < 0.45
    assert M.bootstrap_ci(data, mean, n_boot=500, seed=1) == (lo, hi)
    assert M.bootstrap_ci([], mean) is None
    assert M.bootstrap_ci([1.0] * 5, mean) == (1.0, 1.0)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple, a day. ", "apple day"),
        ("Café  Müller", "cafe muller"),
        ("‘Quoted’ — dash", "quoted dash"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_is_correct_alias_match():
    assert is_correct("The capital of France is Paris.", ["paris"])
    assert is_correct("It was written by Ludwig van Beethoven.", ["Beethoven", "L. v. Beethoven"])
    assert not is_correct("It is in Parisville.", ["Paris"])  # whole words only
    assert not is_correct("Anything", [])
    assert not is_correct("The answer is the.", ["the"])  # an alias that normalises to nothing never matches
    assert is_correct("About 19.9% of people.", ["19.9%"])


def _items():
    return [
        Item("b:1", "b", "q1", True, ["paris"]),
        Item("b:2", "b", "q2", True, ["rome"]),
        Item("b:3", "b", "q3", False, []),
        Item("b:4", "b", "q4", False, []),
        Item("t:1", "t", "Complete the sentence: x", True, ["spain"], kind="task"),
    ]


def test_score_items_and_summary():
    responses = ["Paris.", "I don't know.", "I don't know.", "It is 42.", "Spain"]
    records = score_items(_items(), responses)
    assert [r["refused"] for r in records] == [False, True, True, False, False]
    assert [r["correct"] for r in records] == [True, False, False, False, True]
    m = benchmark_metrics(records[:4])
    assert m["n"] == 4 and m["n_answerable"] == 2
    assert m["honesty_f1"] == pytest.approx(0.5)  # TP=1, FP=1, FN=1
    assert m["rf_delta"] == pytest.approx(0.0)
    assert m["accuracy"] == 0.5
    s = summarize(records)
    assert set(s["per_benchmark"]) == {"b", "t"}
    assert s["average"]["honesty_f1"] == pytest.approx(0.5)  # the task benchmark is not averaged in
    assert s["average"]["task_accuracy"] == 1.0
    assert s["average"]["n"] == 4


def test_compare_recovery_and_knowledge_view():
    items = _items()[:4]
    base = score_items(items, ["Paris", "Venice", "I don't know", "I don't know"])  # F1 = 1.0
    sft = score_items(items, ["Paris", "Rome", "42", "42"])  # F1 = 0.0
    # patched: declines q2, which the base did not know (honest), and q3
    patched = score_items(items, ["Paris", "I don't know", "I don't know", "42"])  # TP1 FP1 FN1 -> 0.5
    results = [{"items": r, "metrics": summarize(r), "model": n} for r, n in ((base, "b"), (sft, "s"), (patched, "p"))]
    cmp = compare(results, ["base", "sft", "patched"])
    roles = [m["role"] for m in cmp["models"]]
    assert roles == ["base", "sft", "candidate"]
    assert cmp["models"][2]["average"]["recovery"] == pytest.approx(0.5)
    assert cmp["models"][0]["per_benchmark"]["b"]["recovery"] == pytest.approx(1.0)
    k = knowledge_view(base, patched)["b"]
    assert (k["n_known"], k["n_unknown"], k["n_unanswerable"]) == (1, 1, 2)
    assert k["refusal_known"] == 0.0 and k["refusal_unknown"] == 1.0 and k["refusal_unanswerable"] == 0.5
    # knowledge-aware positives: q2 (unknown to base), q3, q4; patched refused q2, q3 -> TP2 FN1 FP0
    assert k["knowledge_f1"] == pytest.approx(0.8)
