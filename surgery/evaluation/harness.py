"""``surgery eval`` results in the lm-evaluation-harness layout, and back (pure functions, no I/O).

People who evaluate models already read lm-evaluation-harness (>= 0.4) result files: ``results``
(per task ``"<metric>,<filter>"`` and ``"<metric>_stderr,<filter>"``), ``groups``/``group_subtasks``,
``configs``, ``versions``, ``n-shot``, ``higher_is_better``, ``n-samples``, ``config`` and per-item
``samples``. Writing ours the same way lets their tooling (leaderboards, ``--compare`` scripts, the
``lm_eval`` task pack in ``surgery/lm_eval_tasks/``) read them unchanged.

Every built-in benchmark is the harness task ``surgery_<name>``; a user's JSONL keeps its benchmark
name. The macro average over honesty benchmarks is the group ``surgery_honesty`` (unweighted, as the
pack's group yaml says). The per-item values below are exactly what the pack's ``process_results``
returns, so a metric aggregated here and by the harness is the same number.

Standard errors: ``surgery eval`` bootstraps every metric over items with numpy (``bootstrap_iters``,
0 = none, reported as ``"N/A"`` like the harness). The harness bootstraps only its own aggregations:
the pack's rates use its ``nanmean`` and get a bootstrap stderr there; honesty F1 and RF-delta use the
pack's own aggregations (the harness's sklearn ``f1`` differs on degenerate sets and takes minutes to
bootstrap 100000 times), so the harness reports their stderr as ``"N/A"``. A group's stderr is the
harness's unweighted formula sqrt(sum se_i^2) / k.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import metrics as M
from .benchmarks import BENCHMARKS
from .refusal import RefusalMatcher, default_matcher
from .scoring import is_correct

TASK_PREFIX = "surgery_"
GROUP = "surgery_honesty"
FILTER = "none"
#: version of the task definitions (prompt, scoring); bump when either changes
TASK_VERSION = 1.0
STDERR_NA = "N/A"

#: metric -> (harness aggregation, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "honesty_f1": ("honesty_f1", True),
    "rf_delta": ("rf_delta", True),
    "refusal_answerable": ("nanmean", False),
    "refusal_unanswerable": ("nanmean", True),
    "accuracy": ("nanmean", True),
    "over_refusal": ("nanmean", False),
}
#: which metrics a benchmark reports, by what it holds (the pack's process_results_<shape> functions)
SHAPES: dict[str, tuple[str, ...]] = {
    "mixed": ("honesty_f1", "rf_delta", "refusal_answerable", "refusal_unanswerable", "accuracy", "over_refusal"),
    "answerable": ("refusal_answerable", "accuracy", "over_refusal"),
    "unanswerable": ("honesty_f1", "refusal_unanswerable", "over_refusal"),
    "task": ("accuracy",),
}
#: the result keys that are not lm-evaluation-harness's own (kept so ``--compare`` and audits work)
SURGERY_KEYS = (
    "surgery_version",
    "model",
    "command",
    "options",
    "precision",
    "seconds",
    "items_per_second",
    "n_available",
)


def task_name(benchmark: str) -> str:
    """The harness task of a benchmark: ``surgery_selfaware`` for a built-in, the name itself otherwise."""
    return f"{TASK_PREFIX}{benchmark}" if benchmark in BENCHMARKS else benchmark


def benchmark_name(task: str) -> str:
    """Inverse of :func:`task_name`."""
    rest = task[len(TASK_PREFIX) :] if task.startswith(TASK_PREFIX) else None
    return rest if rest in BENCHMARKS else task


def shape_of(kind: str, n_answerable: int, n_unanswerable: int) -> str:
    """The metric set a benchmark reports: a task, only answerable, only unanswerable, or both."""
    if kind == "task":
        return "task"
    if n_answerable and n_unanswerable:
        return "mixed"
    return "answerable" if n_answerable else "unanswerable"


def judge(doc: Mapping[str, Any], response: str, matcher: RefusalMatcher | None = None) -> tuple[bool, bool]:
    """(refused, correct) for one item and response: the same rule as ``evaluate.score_items``."""
    refused = (matcher or default_matcher()).is_refusal(response)
    return refused, bool(doc["answerable"] and not refused and is_correct(response, doc.get("answers") or []))


def item_values(
    refused: bool, answerable: bool, correct: bool, metrics: Sequence[str], missing: float | None = None
) -> dict[str, Any]:
    """One item's contribution to each metric, as the harness aggregations (``f1``, ``nanmean``) take it.

    ``missing`` marks an item outside a rate's group: NaN for the harness's ``nanmean``, None in our JSON.
    """
    per = {
        "honesty_f1": [int(not answerable), int(refused)],  # (gold = unanswerable, prediction = refused)
        "rf_delta": [int(answerable), int(refused)],
        "refusal_answerable": float(refused) if answerable else missing,
        "refusal_unanswerable": float(refused) if not answerable else missing,
        "accuracy": float(correct) if answerable else missing,
        "over_refusal": float(answerable) if refused else missing,
    }
    return {m: per[m] for m in metrics}


def honesty_f1_aggregate(items: Sequence[Sequence[int]]) -> float:
    """Aggregation of ``honesty_f1`` pairs (unanswerable, refused): :func:`metrics.honesty_f1`, NaN if undefined."""
    f1 = M.honesty_f1([bool(r) for _, r in items], [not u for u, _ in items])
    return math.nan if f1 is None else f1


def rf_delta_aggregate(items: Sequence[Sequence[int]]) -> float:
    """Aggregation of ``rf_delta`` pairs (answerable, refused); NaN when either group is empty."""
    ans = [r for a, r in items if a]
    una = [r for a, r in items if not a]
    return sum(una) / len(una) - sum(ans) / len(ans) if ans and una else math.nan


# --- standard errors -----------------------------------------------------------------------------------


def _statistics(r: np.ndarray, a: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of resampled flags (rows = bootstrap draws); NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n_ans = a.sum(1)
        n_una = a.shape[1] - n_ans
        ref_ans = (r & a).sum(1)
        ref_una = (r & ~a).sum(1)
        missed = (~r & ~a).sum(1)
        n_ref = r.sum(1)
        f1 = np.where(ref_una + missed > 0, 2 * ref_una / (2 * ref_una + ref_ans + missed), np.nan)
        rate_ans = np.where(n_ans > 0, ref_ans / n_ans, np.nan)
        rate_una = np.where(n_una > 0, ref_una / n_una, np.nan)
        return {
            "honesty_f1": f1,
            "rf_delta": rate_una - rate_ans,
            "refusal_answerable": rate_ans,
            "refusal_unanswerable": rate_una,
            "accuracy": np.where(n_ans > 0, (c & a).sum(1) / n_ans, np.nan),
            "over_refusal": np.where(n_ref > 0, ref_ans / n_ref, np.nan),
        }


def bootstrap_stderrs(
    records: Sequence[Mapping[str, Any]], metrics: Sequence[str], iters: int, seed: int = 1234
) -> dict[str, float | None]:
    """Bootstrap standard error (sample std of the resampled statistic) of each metric; None if undefined."""
    if iters <= 0 or not records:
        return {m: None for m in metrics}
    r = np.array([bool(x["refused"]) for x in records])
    a = np.array([bool(x["answerable"]) for x in records])
    c = np.array([bool(x["correct"]) for x in records])
    n = len(records)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    chunk = max(1, 2_000_000 // n)  # bounded memory for large benchmarks
    for start in range(0, iters, chunk):
        idx = rng.integers(0, n, size=(min(chunk, iters - start), n))
        stats = _statistics(r[idx], a[idx], c[idx])
        for m in metrics:
            draws[m].append(stats[m])
    out: dict[str, float | None] = {}
    for m in metrics:
        vals = np.concatenate(draws[m])
        vals = vals[np.isfinite(vals)]
        out[m] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return out


def group_stderr(stderrs: Sequence[float | None]) -> float | None:
    """The harness's stderr of an unweighted mean of independent subtask metrics: sqrt(sum se^2) / k."""
    if not stderrs or any(s is None for s in stderrs):
        return None
    return math.sqrt(sum(s * s for s in stderrs if s is not None)) / len(stderrs)


# --- internal result -> harness layout -----------------------------------------------------------------


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sanitize_model_name(model: str) -> str:
    """The harness's folder name for a model (``/`` and other path characters become ``__``)."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", model)


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def task_config(task: str, benchmark: str, shape: str, options: Mapping[str, Any]) -> dict:
    """The ``configs`` entry of a task: what the pack's yaml says, plus the sampling that chose the items."""
    return {
        "task": task,
        "output_type": "generate_until",
        "test_split": options.get("split", "eval"),
        "doc_to_text": "question",
        "doc_to_target": "answers",
        "num_fewshot": 0,
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": options.get("max_new_tokens", 32)},
        "metric_list": [
            {"metric": m, "aggregation": METRICS[m][0], "higher_is_better": METRICS[m][1]} for m in SHAPES[shape]
        ],
        "metadata": {
            "version": TASK_VERSION,
            "benchmark": benchmark,
            "split": options.get("split", "eval"),
            "limit": options.get("limit"),
            "seed": options.get("seed", 0),
        },
    }


def samples_of(records: Sequence[Mapping[str, Any]], metrics: Sequence[str], max_new_tokens: int) -> list[dict]:
    """Per-item records in the harness's sample layout, keeping our judgements (``refused``, ``correct``)."""
    gen_kwargs = {"until": [], "do_sample": False, "max_gen_toks": max_new_tokens}
    out = []
    for i, r in enumerate(records):
        doc = {
            "id": r["id"],
            "benchmark": r["benchmark"],
            "question": r["prompt"],
            "answerable": bool(r["answerable"]),
            "answers": list(r.get("answers") or []),
            "kind": r.get("kind", "honesty"),
        }
        target = r["answers"][0] if r.get("answers") else ""
        doc_text = json.dumps(doc, indent=2, ensure_ascii=False)
        sample = {
            "doc_id": i,
            "doc": doc,
            "target": target,
            "arguments": {"gen_args_0": {"arg_0": r["prompt"], "arg_1": gen_kwargs}},
            "resps": [[r["response"]]],
            "filtered_resps": [r["response"]],
            "filter": FILTER,
            "metrics": list(metrics),
            "doc_hash": _hash(doc_text),
            "prompt_hash": _hash(r["prompt"]),
            "target_hash": _hash(str(target)),
            "refused": bool(r["refused"]),
            "correct": bool(r["correct"]),
        }
        sample.update(item_values(r["refused"], r["answerable"], r["correct"], metrics))
        out.append(sample)
    return out


def to_harness(
    result: Mapping[str, Any],
    *,
    bootstrap_iters: int = 1000,
    date: float | None = None,
    include_samples: bool = True,
) -> dict:
    """The harness layout of a ``run_eval`` result (internal keys kept under :data:`SURGERY_KEYS`).

    ``n-samples.original`` is each benchmark's size before ``--limit`` (the result's ``n_available``);
    ``include_samples`` embeds ``samples`` (as ``simple_evaluate`` returns them) for ``--json``.
    """
    original_counts = result.get("n_available") or {}
    options = dict(result.get("options") or {})
    max_new_tokens = int(options.get("max_new_tokens", 32))
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for rec in result["items"]:
        by_bench.setdefault(rec["benchmark"], []).append(rec)
    per = result["metrics"]["per_benchmark"]
    results: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    samples: dict[str, list[dict]] = {}
    n_samples: dict[str, dict] = {}
    higher: dict[str, dict] = {}
    honesty_tasks: list[str] = []
    for bench, recs in by_bench.items():
        m = per[bench]
        shape = shape_of(m["kind"], m["n_answerable"], m["n_unanswerable"])
        metrics = SHAPES[shape]
        task = task_name(bench)
        stderrs = bootstrap_stderrs(recs, metrics, bootstrap_iters)
        row: dict[str, Any] = {"name": task, "alias": task, "sample_len": len(recs)}
        for name in metrics:
            row[f"{name},{FILTER}"] = m[name]
            se = stderrs[name]
            row[f"{name}_stderr,{FILTER}"] = STDERR_NA if se is None else se
        results[task] = row
        configs[task] = task_config(task, bench, shape, options)
        higher[task] = {name: METRICS[name][1] for name in metrics}
        n_samples[task] = {"original": int(original_counts.get(bench, len(recs))), "effective": len(recs)}
        samples[task] = samples_of(recs, metrics, max_new_tokens)
        if shape != "task":
            honesty_tasks.append(task)
    groups: dict[str, dict] = {}
    group_subtasks: dict[str, list[str]] = {}
    if honesty_tasks:
        avg = result["metrics"]["average"]
        row = {"name": GROUP, "alias": GROUP, "sample_len": sum(n_samples[t]["effective"] for t in honesty_tasks)}
        for name in SHAPES["mixed"]:
            members = [results[t] for t in honesty_tasks if f"{name},{FILTER}" in results[t]]
            if not members:
                continue
            row[f"{name},{FILTER}"] = avg.get(name)
            ses = [None if r[f"{name}_stderr,{FILTER}"] == STDERR_NA else r[f"{name}_stderr,{FILTER}"] for r in members]
            se = group_stderr(ses)
            row[f"{name}_stderr,{FILTER}"] = STDERR_NA if se is None else se
        groups[GROUP] = row
        group_subtasks[GROUP] = honesty_tasks
    versions = {t: TASK_VERSION for t in results} | {g: TASK_VERSION for g in groups}
    doc: dict[str, Any] = {
        "results": {**results, **{g: dict(r) for g, r in groups.items()}},
        "groups": groups,
        "group_subtasks": group_subtasks,
        "configs": configs,
        "versions": versions,
        "n-shot": {t: 0 for t in results},
        "higher_is_better": higher | {g: {k: METRICS[k][1] for k in SHAPES["mixed"]} for g in groups},
        "n-samples": n_samples,
        "config": {
            "model": "surgery",
            "model_args": {"pretrained": result.get("model"), "backend": options.get("backend", "torch")},
            "batch_size": options.get("batch_size"),
            "device": (result.get("precision") or {}).get("device"),
            "limit": options.get("limit"),
            "bootstrap_iters": bootstrap_iters,
            "gen_kwargs": {"do_sample": False, "max_gen_toks": max_new_tokens},
            "random_seed": options.get("seed", 0),
        },
        "date": date,
        "model_name": result.get("model"),
        "model_name_sanitized": sanitize_model_name(str(result.get("model") or "model")),
        "total_evaluation_time_seconds": str(result.get("seconds")),
        "generator": result.get("generator"),
        **{k: result[k] for k in SURGERY_KEYS if k in result},
    }
    if include_samples:
        doc["samples"] = samples
    return _clean(doc)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the document is strict JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return _json_number(obj)


def sample_lines(samples: Sequence[Mapping[str, Any]]) -> str:
    """A task's samples as JSONL text (one record a line), as ``--log-samples`` writes them."""
    return "".join(json.dumps(_clean(dict(s)), ensure_ascii=False, allow_nan=False) + "\n" for s in samples)


def results_file_name(date_id: str) -> str:
    return f"results_{date_id}.json"


def samples_file_name(task: str, date_id: str) -> str:
    return f"samples_{task}_{date_id}.jsonl"


def date_id_of(results_file: str) -> str | None:
    """The timestamp part of ``results_<date_id>.json`` (or ``<stem>_<date_id>.json``); None otherwise."""
    m = re.match(r"^(?:results|.+?)_(\d{4}-\d{2}-\d{2}T[\d\-.]+)\.json$", results_file)
    return m.group(1) if m else None


# --- harness layout -> internal records ---------------------------------------------------------------


def is_harness_layout(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("results"), dict) and isinstance(doc.get("configs"), dict)


def records_from_samples(
    task: str, samples: Sequence[Mapping[str, Any]], matcher: RefusalMatcher | None = None
) -> list[dict]:
    """Our per-item records from harness samples: ours carry ``refused``/``correct``; ``lm_eval``'s are judged again.

    Samples written by ``lm_eval`` with the task pack hold the item in ``doc`` and the response in
    ``filtered_resps``; they are judged with the same matcher the pack used (the default one).
    """
    out = []
    for s in samples:
        doc = s.get("doc") or {}
        resp = s.get("filtered_resps") or s.get("resps") or [""]
        while isinstance(resp, list):
            resp = resp[0] if resp else ""
        response = str(resp).strip()
        if "refused" in s and "correct" in s:
            refused, correct = bool(s["refused"]), bool(s["correct"])
        else:
            refused, correct = judge(doc, response, matcher)
        out.append(
            {
                "id": str(doc.get("id", f"{task}:{s.get('doc_id')}")),
                "benchmark": str(doc.get("benchmark") or benchmark_name(task)),
                "kind": doc.get("kind", "honesty"),
                "prompt": doc.get("question", ""),
                "answerable": bool(doc.get("answerable")),
                "answers": list(doc.get("answers") or []),
                "response": response,
                "refused": refused,
                "correct": correct,
            }
        )
    return out


def internal_fields(doc: Mapping[str, Any]) -> dict:
    """The keys of our own result kept in a harness document (model, options, precision, timing)."""
    out = {k: doc[k] for k in SURGERY_KEYS if k in doc}
    out.setdefault("model", doc.get("model_name"))
    if "generator" in doc:
        out["generator"] = doc["generator"]
    return out
