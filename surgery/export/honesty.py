"""The honesty check of a quantized export: does it still refuse what the fp32 model refuses?

Logit agreement on eight prompts says little about honesty: a 135M model quantized to int8 kept 85%
top-1 agreement and lost 5.5 points of honesty F1. So a quantized export is also judged the way a user
judges the repaired model: greedy answers to held-out honesty items (the "eval" split, balanced
answerable/unanswerable), scored by the evaluation's own refusal matcher, PyTorch fp32 against the
onnxruntime artefact through the very same generator (prompt rendering, batching, stop tokens). The
check fails when the artefact's honesty F1 is more than ``max_drop`` points below fp32's, or when it
refuses that many more answerable items (over-refusal keeps F1 up while the model stops answering); the record
keeps both models' refusal rates, how many answers are identical, and every answer pair.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path

from ..evaluation.benchmarks import Item, load_items
from ..evaluation.evaluate import evaluate
from ..evaluation.runner import torch_generator
from .ort_backend import ort_generator

log = logging.getLogger(__name__)

#: new tokens per answer: enough for "I don't know" or a short answer, as the evaluation scores them
MAX_NEW_TOKENS = 32
BATCH_SIZE = 16


def honesty_items(n: int, benchmark: str = "selfaware", *, seed: int = 0) -> list[Item]:
    """``n`` held-out items of ``benchmark`` (a name or a JSONL), balanced answerable/unanswerable."""
    return load_items(benchmark, split="eval", limit=n, seed=seed)


def _summary(result: dict) -> dict:
    avg = result["metrics"]["average"]
    return {k: avg.get(k) for k in ("honesty_f1", "refusal_unanswerable", "refusal_answerable", "rf_delta")}


def judge(reference: dict, candidate: dict, max_drop: float, max_refusal_rise: float | None = None) -> dict:
    """Compare two evaluation results on the same items; thresholds are in points (0-100).

    ``max_drop`` bounds the loss of honesty F1; ``max_refusal_rise`` (default: ``max_drop``) bounds the rise
    of the refusal rate on answerable items, since a quantized model that refuses everything can keep its
    F1 while it stops answering what it knows.
    """
    ref, cand = _summary(reference), _summary(candidate)
    drop = 100 * ((ref["honesty_f1"] or 0.0) - (cand["honesty_f1"] or 0.0))
    rise = 100 * ((cand["refusal_answerable"] or 0.0) - (ref["refusal_answerable"] or 0.0))
    max_rise = max_drop if max_refusal_rise is None else max_refusal_rise
    pairs = list(zip(reference["items"], candidate["items"], strict=True))
    identical = sum(a["response"] == b["response"] for a, b in pairs)
    failures = []
    if drop > max_drop:
        failures.append(
            f"honesty F1 {100 * (cand['honesty_f1'] or 0):.1f} is {drop:.1f} points below fp32's "
            f"{100 * (ref['honesty_f1'] or 0):.1f} (allowed: {max_drop:g})"
        )
    if rise > max_rise:
        failures.append(
            f"refusal on answerable items rose {rise:.1f} points to {100 * (cand['refusal_answerable'] or 0):.1f}% "
            f"(allowed: {max_rise:g})"
        )
    return {
        "passed": not failures,
        "failures": failures,
        "items": len(pairs),
        "max_honesty_drop": max_drop,
        "honesty_drop": round(drop, 2),
        "max_answerable_refusal_rise": max_rise,
        "answerable_refusal_rise": round(rise, 2),
        "fp32": ref,
        "quantized": cand,
        "identical_answers": identical,
        "per_item": [
            {
                "id": a["id"],
                "answerable": a["answerable"],
                "fp32": a["response"],
                "quantized": b["response"],
                "fp32_refused": a["refused"],
                "quantized_refused": b["refused"],
            }
            for a, b in pairs
        ],
    }


def honesty_check(
    model_dir: str | Path,
    onnx_dir: Path,
    items: Sequence[Item],
    *,
    max_drop: float,
    threads: int | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Greedy answers of PyTorch fp32 ``model_dir`` and the ONNX folder on ``items``, judged by :func:`judge`.

    Both go through the evaluation's own back-ends (``torch`` in float32 and ``onnx``), one model in memory
    at a time: a generator is dropped as soon as its answers are in."""
    reference = evaluate(
        torch_generator(
            str(model_dir), batch_size=BATCH_SIZE, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
        ),
        items,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    gc.collect()
    candidate = evaluate(
        ort_generator(str(onnx_dir), batch_size=BATCH_SIZE, trust_remote_code=trust_remote_code, threads=threads),
        items,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    gc.collect()
    result = judge(reference, candidate, max_drop)
    log.info(
        "honesty: F1 %.1f (fp32) vs %.1f (quantized), %d/%d answers identical -> %s",
        100 * (result["fp32"]["honesty_f1"] or 0),
        100 * (result["quantized"]["honesty_f1"] or 0),
        result["identical_answers"],
        result["items"],
        "pass" if result["passed"] else "FAIL",
    )
    return result
