"""Side-by-side metrics of several ``eval`` results: recovery and the knowledge-aware view.

The first result is the base (pre-SFT) model and the second the SFT model; every result gets
recovery = (F1_x − F1_sft) / (F1_base − F1_sft). Benchmark labels say which questions are
answerable in principle, but a small model does not know most of them, and declining those is
honest. So answerable items are also split by whether the *base* model answered them correctly
("known") or not ("unknown"), and each model's refusal rate is reported on both (R-Tuning style),
plus a knowledge-aware F1 whose positive class is "unanswerable, or unknown to the base model".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import SurgeryError
from . import metrics as M
from .evaluate import load_json

ROLES = ("base", "sft")


def role_of(index: int) -> str:
    """The role of the n-th compared result: base, sft, then candidates."""
    return ROLES[index] if index < len(ROLES) else "candidate"


def knowledge_view(base_items: Sequence[dict], items: Sequence[dict]) -> dict[str, dict]:
    """Per benchmark: refusal on base-known / base-unknown answerable items and on unanswerable ones."""
    base_known = {r["id"]: bool(r["correct"]) for r in base_items if r["answerable"]}
    base_ids = {r["id"] for r in base_items}
    by_bench: dict[str, list[dict]] = {}
    for r in items:
        if r["id"] in base_ids and r.get("kind", "honesty") != "task":
            by_bench.setdefault(r["benchmark"], []).append(r)
    out = {}
    for bench, rs in by_bench.items():
        known = [r["refused"] for r in rs if r["answerable"] and base_known.get(r["id"])]
        unknown = [r["refused"] for r in rs if r["answerable"] and not base_known.get(r["id"])]
        unans = [r["refused"] for r in rs if not r["answerable"]]
        # knowledge-aware labels: "should decline" = unanswerable or not known to the base model
        should_answer = [bool(r["answerable"] and base_known.get(r["id"])) for r in rs]
        out[bench] = {
            "n_known": len(known),
            "n_unknown": len(unknown),
            "n_unanswerable": len(unans),
            "refusal_known": M.rate(known),
            "refusal_unknown": M.rate(unknown),
            "refusal_unanswerable": M.rate(unans),
            "knowledge_f1": M.honesty_f1([r["refused"] for r in rs], should_answer),
        }
    return out


def compare(results: Sequence[dict], labels: Sequence[str]) -> dict:
    """Metrics of each result per benchmark and averaged, with recovery and the knowledge view."""
    if len(results) < 2:
        raise SurgeryError("--compare needs at least two result files: the base model's, then the SFT model's.")
    if len(set(labels)) != len(labels):
        raise SurgeryError("The compared result files need distinct names.")
    base, sft = results[0]["metrics"], results[1]["metrics"]
    benches: list[str] = []
    for res in results:
        for b in res["metrics"]["per_benchmark"]:
            if b not in benches:
                benches.append(b)
    models = []
    for i, (res, label) in enumerate(zip(results, labels, strict=False)):
        per = {}
        for b in benches:
            m = dict(res["metrics"]["per_benchmark"].get(b) or {})
            if m:
                m["recovery"] = M.recovery(
                    m.get("honesty_f1"),
                    (sft["per_benchmark"].get(b) or {}).get("honesty_f1"),
                    (base["per_benchmark"].get(b) or {}).get("honesty_f1"),
                )
            per[b] = m
        avg = dict(res["metrics"]["average"])
        avg["recovery"] = M.recovery(
            avg.get("honesty_f1"), sft["average"].get("honesty_f1"), base["average"].get("honesty_f1")
        )
        models.append(
            {
                "label": label,
                "role": role_of(i),
                "model": res.get("model"),
                "per_benchmark": per,
                "average": avg,
                "knowledge": knowledge_view(results[0]["items"], res["items"]),
            }
        )
    return {"benchmarks": benches, "models": models}


def labels_for(paths: Sequence[str | Path]) -> list[str]:
    """Short, distinct names for result files: the file stem, or the full path where stems clash."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def compare_files(paths: Sequence[str | Path]) -> tuple[dict, list[dict]]:
    """``surgery eval --compare`` as a library call: the comparison of saved results, and those results."""
    results = [load_json(p) for p in paths]
    return compare(results, labels_for(paths)), results
