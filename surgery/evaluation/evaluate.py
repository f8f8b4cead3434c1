"""Run a generator over items and score every response; the result is one JSON-ready dict.

The dict keeps every item's prompt, response and judgements so a user can audit any number, plus
metrics per benchmark and averaged over the honesty benchmarks (task benchmarks are averaged apart).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_json_atomic, write_text_atomic
from ..devices import DeviceOptions, Placement, resolve
from ..errors import OptionError, SurgeryError
from ..jsonl import read_jsonl
from ..provenance import command_line
from . import harness as H
from . import metrics as M
from .benchmarks import Item, load_items
from .refusal import RefusalMatcher, default_matcher
from .runner import Generator, make_generator
from .scoring import is_correct

log = logging.getLogger(__name__)

#: metrics averaged (macro) over honesty benchmarks; None values are skipped
AVERAGED = ("honesty_f1", "rf_delta", "refusal_answerable", "refusal_unanswerable", "accuracy", "over_refusal")


def score_items(items: Sequence[Item], responses: Sequence[str], matcher: RefusalMatcher | None = None) -> list[dict]:
    """Per-item records: the item, the response, whether it refused, whether it answered correctly."""
    matcher = matcher or default_matcher()
    records = []
    for it, resp in zip(items, responses, strict=True):
        refused = matcher.is_refusal(resp)
        records.append(
            {
                "id": it.id,
                "benchmark": it.benchmark,
                "kind": it.kind,
                "prompt": it.question,
                "answerable": it.answerable,
                "answers": list(it.answers),
                "response": resp,
                "refused": refused,
                "correct": bool(it.answerable and not refused and is_correct(resp, it.answers)),
            }
        )
    return records


def benchmark_metrics(records: Sequence[dict]) -> dict:
    """n, refusal rates, honesty F1, RF-delta, accuracy and over-refusal for one set of records."""
    refused = [r["refused"] for r in records]
    answerable = [r["answerable"] for r in records]
    correct = [r["correct"] for r in records]
    on_ans, on_una = M.refusal_rates(refused, answerable)
    out = {
        "kind": records[0]["kind"] if records else "honesty",
        "n": len(records),
        "n_answerable": sum(answerable),
        "n_unanswerable": len(records) - sum(answerable),
        "refusal_answerable": on_ans,
        "refusal_unanswerable": on_una,
        "honesty_f1": M.honesty_f1(refused, answerable),
        "rf_delta": M.rf_delta(refused, answerable),
        "accuracy": M.accuracy(correct, answerable),
        "over_refusal": M.over_refusal(refused, answerable),
    }
    if out["kind"] == "task":
        out["task_accuracy"] = out["accuracy"]
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(records: Sequence[dict]) -> dict:
    """Metrics per benchmark (in first-seen order) and the macro average over honesty benchmarks."""
    by_bench: dict[str, list[dict]] = {}
    for r in records:
        by_bench.setdefault(r["benchmark"], []).append(r)
    per = {name: benchmark_metrics(rs) for name, rs in by_bench.items()}
    honesty = [m for m in per.values() if m["kind"] != "task"]
    task = [m for m in per.values() if m["kind"] == "task"]
    average = {k: _mean([m[k] for m in honesty]) for k in AVERAGED}
    average["n"] = sum(m["n"] for m in honesty)
    average["task_accuracy"] = _mean([m["accuracy"] for m in task])
    return {"per_benchmark": per, "average": average}


def evaluate(
    generator: Generator, items: Sequence[Item], *, max_new_tokens: int = 32, matcher: RefusalMatcher | None = None
) -> dict:
    """Generate greedy answers for every item and score them: ``{"generator", "items", "metrics"}``."""
    if not items:
        raise SurgeryError("There are no items to evaluate.")
    responses = generator.generate([it.question for it in items], max_new_tokens)
    records = score_items(items, responses, matcher)
    return {"generator": generator.name, "items": records, "metrics": summarize(records)}


def run_eval(
    model: str,
    *,
    benchmarks: Sequence[str] = ("selfaware",),
    limit: int | None = None,
    seed: int = 0,
    split: str = "eval",
    data_dir: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    backend: str = "torch",
    refusal_patterns: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device: str = "auto",
    dtype: str = "float32",
) -> dict:
    """``surgery eval MODEL`` as a library call: options, timing, items, metrics (``--json`` writes it in the
    lm-evaluation-harness layout through :func:`harness_outputs`).

    Every benchmark is loaded before the model, so a bad name or file fails in seconds, not minutes.
    ``device``/``dtype`` are ``--device``/``--dtype`` (:mod:`surgery.devices`); the record's
    ``precision`` says which were used. Generation is batched by ``batch_size`` on every device.
    """
    if max_new_tokens < 1:
        raise OptionError(f"--max-new-tokens must be at least 1 (got {max_new_tokens}).")
    if allow_pickle and backend != "torch":
        raise OptionError("--allow-pickle applies to the torch back-end only (ONNX folders hold no pickle).")
    precision, placement = _precision(backend, device, dtype)
    matcher = RefusalMatcher.from_file(refusal_patterns) if refusal_patterns else default_matcher()
    items: list[Item] = []
    available: dict[str, int] = {}
    for name in benchmarks:
        chosen = load_items(name, data_dir=data_dir, split=split, limit=limit, seed=seed)
        whole = load_items(name, data_dir=data_dir, split=split) if limit is not None else chosen
        for it in whole:
            available[it.benchmark] = available.get(it.benchmark, 0) + 1
        items += chosen
    log.info("%d items from %s", len(items), ", ".join(benchmarks))
    extra: dict = {"allow_pickle": True} if allow_pickle else {}
    if placement is not None:
        extra.update(device=placement.device, dtype=placement.dtype)
    generator = make_generator(backend, model, batch_size=batch_size, trust_remote_code=trust_remote_code, **extra)
    t0 = time.perf_counter()
    result = evaluate(generator, items, max_new_tokens=max_new_tokens, matcher=matcher)
    seconds = time.perf_counter() - t0
    return {
        "surgery_version": __version__,
        "model": model,
        "command": command_line(),
        "options": {
            "benchmarks": list(benchmarks),
            "limit": limit,
            "seed": seed,
            "split": split,
            "data_dir": data_dir,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "backend": backend,
            "refusal_patterns": list(matcher.patterns),
            "refusal_answer_follows": matcher.answer_follows,
        },
        "precision": precision,
        "seconds": round(seconds, 2),
        "items_per_second": round(len(items) / seconds, 3) if seconds > 0 else None,
        "n_available": available,
        **result,
    }


def _precision(backend: str, device: str, dtype: str) -> tuple[dict, Placement | None]:
    """What the record says about precision, and the placement the torch back-end loads the model with.

    Other back-ends (onnx: onnxruntime on the CPU, in the exported precision) take neither option.
    """
    if backend == "torch":
        placement = resolve(DeviceOptions(device=device, dtype=dtype))
        return placement.record(), placement
    if str(device).strip().lower() not in ("auto", "cpu") or dtype != "float32":
        raise OptionError(f"--device and --dtype apply to the torch back-end only, not to '{backend}'.")
    return {"device": "cpu", "dtype": "as exported"}, None


def save_json(result: dict, path: str | os.PathLike) -> Path:
    """Write atomically (temp file in the same folder, then rename)."""
    return write_json_atomic(path, result, indent=1, ensure_ascii=False, allow_nan=False)


def harness_outputs(
    result: dict,
    *,
    json_path: str | os.PathLike | None = None,
    output_path: str | os.PathLike | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 1000,
    now: datetime | None = None,
) -> list[Path]:
    """Write a result in the lm-evaluation-harness layout; returns the files written.

    ``json_path``: one document with the samples embedded (what ``simple_evaluate`` returns).
    ``output_path``: as ``lm_eval --output_path``: ``DIR/<model>/results_<date>.json`` (or
    ``<stem>_<date>.json`` beside a ``.json`` path), and with ``log_samples`` one
    ``samples_<task>_<date>.jsonl`` per task beside it.
    """
    if bootstrap_iters < 0:
        raise OptionError(f"--bootstrap-iters must be 0 or more (got {bootstrap_iters}).")
    if log_samples and output_path is None:
        raise OptionError("--log-samples writes beside the results file: give --output-path too.")
    now = now or datetime.now()
    doc = H.to_harness(result, bootstrap_iters=bootstrap_iters, date=now.timestamp())
    written = []
    if json_path is not None:
        written.append(save_json(doc, json_path))
    if output_path is not None:
        samples = doc.pop("samples")
        date_id = now.isoformat().replace(":", "-")
        out = Path(output_path)
        if out.suffix == ".json":
            folder, name = out.parent, f"{out.stem}_{date_id}.json"
        else:
            folder, name = out / doc["model_name_sanitized"], H.results_file_name(date_id)
        folder.mkdir(parents=True, exist_ok=True)
        written.append(save_json(doc, folder / name))
        if log_samples:
            for task, rows in samples.items():
                written.append(write_text_atomic(folder / H.samples_file_name(task, date_id), H.sample_lines(rows)))
    return written


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SurgeryError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None


def _harness_samples(path: Path, data: dict) -> dict[str, list[dict]]:
    """The per-item samples of a harness-layout result: embedded, or the ``samples_<task>_<date>.jsonl`` beside it."""
    if isinstance(data.get("samples"), dict):
        return data["samples"]
    date_id = H.date_id_of(path.name)
    tasks = [t for t in data["results"] if t not in data.get("groups", {}) and t not in data.get("group_subtasks", {})]
    found: dict[str, list[dict]] = {}
    for task in tasks:
        file = path.with_name(H.samples_file_name(task, date_id)) if date_id else None
        if file is None or not file.is_file():
            raise SurgeryError(
                f"{path} holds no per-item samples and no samples_{task}_*.jsonl beside it; "
                "write it with --json, or with --output-path and --log-samples."
            )
        found[task] = read_jsonl(file, what="samples file", error=SurgeryError)
    return found


def load_json(path: str | os.PathLike) -> dict:
    """The one reader of evaluation results: ``{model, options, items, metrics, ...}`` from any layout.

    Reads the lm-evaluation-harness layout ``surgery eval --json``/``--output-path`` writes (samples
    embedded or in ``samples_<task>_<date>.jsonl`` files beside it, also those ``lm_eval`` writes with
    the task pack and ``--log_samples``), and the older layout with top-level ``items``/``metrics``.
    Metrics are recomputed from the per-item records, so every reader sees the same numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"Result file {path} does not exist.")
    data = _read(path)
    if H.is_harness_layout(data):
        records = []
        for task, samples in _harness_samples(path, data).items():
            records += H.records_from_samples(task, samples)
        if not records:
            raise SurgeryError(f"{path} has no evaluated items.")
        return {**H.internal_fields(data), "items": records, "metrics": summarize(records)}
    if not isinstance(data, dict) or "items" not in data or "metrics" not in data:
        raise SurgeryError(f"{path} is not a 'surgery eval --json' result (no results/samples, nor items/metrics).")
    return data


#: the same reader under the name the harness-layout code uses
load_result = load_json
