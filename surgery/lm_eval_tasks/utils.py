"""Functions the task pack's yaml files name (``!function utils.<name>``); loaded by lm_eval by path.

lm_eval imports this file as a stand-alone module, so it imports the package absolutely. The per-item
values and their aggregations come from :mod:`surgery.evaluation.harness`, which ``surgery eval``'s
harness-layout output uses too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from surgery.evaluation import harness as H
from surgery.evaluation.benchmarks import load_items


def load_dataset(
    benchmark: str,
    split: str = "eval",
    data_dir: str | None = None,
    limit: int | str | None = None,
    seed: int | str = 0,
    **_ignored: Any,
) -> dict:
    """``{"test": Dataset}`` of a benchmark's items, chosen as ``surgery eval --limit/--seed/--split`` would.

    Keyword arguments come from the task's ``metadata`` merged with ``lm_eval --metadata`` (which also
    carries the model arguments, ignored here).
    """
    import datasets

    items = load_items(
        benchmark,
        data_dir=data_dir,
        split=split,
        limit=int(limit) if limit not in (None, "", "None") else None,
        seed=int(seed),
    )
    return {"test": datasets.Dataset.from_list([it.to_dict() for it in items])}


def doc_to_target(doc: dict) -> str:
    return doc["answers"][0] if doc.get("answers") else ""


def _process(doc: dict, results: Sequence[str], shape: str) -> dict:
    response = str(results[0]).strip()
    refused, correct = H.judge(doc, response)
    return H.item_values(refused, bool(doc["answerable"]), correct, H.SHAPES[shape], missing=math.nan)


def process_results_mixed(doc: dict, results: Sequence[str]) -> dict:
    """Benchmarks with answerable and unanswerable items: every honesty metric."""
    return _process(doc, results, "mixed")


def process_results_answerable(doc: dict, results: Sequence[str]) -> dict:
    """Only answerable items (nq_open, pkqa): refusal rate, accuracy, over-refusal."""
    return _process(doc, results, "answerable")


def process_results_unanswerable(doc: dict, results: Sequence[str]) -> dict:
    """Only unanswerable items (puqa): F1, refusal rate, over-refusal."""
    return _process(doc, results, "unanswerable")


def process_results_task(doc: dict, results: Sequence[str]) -> dict:
    """The SFT task (qa_wikidata): accuracy only."""
    return _process(doc, results, "task")


def honesty_f1(items: Sequence[Sequence[int]]) -> float:
    """Aggregation: F1 of "refused" as a detector of "unanswerable" over (unanswerable, refused) pairs."""
    return H.honesty_f1_aggregate(items)


def rf_delta(items: Sequence[Sequence[int]]) -> float:
    """Aggregation: refusal rate on unanswerable minus on answerable items."""
    return H.rf_delta_aggregate(items)
