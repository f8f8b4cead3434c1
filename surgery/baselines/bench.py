"""The comparison: same pair, same data, same evaluation items, one process per method, one table.

:func:`run_bench` prepares the shared inputs once (evaluation items; D_hon/D_task; the RAIT pool and
DPO pairs, each from the SFT model's own answers on "train"-split questions), runs every method in a
fresh subprocess (:mod:`.worker`: build the model, time it, record its peak RSS, evaluate it), then
writes ``bench.json``, ``bench.md``, ``pareto.png`` and ``budget.png``. A method whose result exists
for the same job is reused, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import SurgeryError
from ..evaluation.evaluate import load_json, save_json
from ..evaluation.metrics import recovery
from ..atomic import write_text_atomic
from .methods import Inputs, changed_parameters, parse_method, slug
from .report import (answer_accuracy, honesty_records, macro_f1, markdown, method_metrics, paired_bootstrap,
                     plot_budget, plot_pareto, task_records)

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class BenchConfig:
    """Everything a comparison depends on (written into ``bench.json``)."""

    base: str
    sft: str
    out_dir: Path
    methods: Sequence[str]
    benchmarks: Sequence[str] = ("selfaware",)
    limit: int | None = 300
    task_benchmarks: Sequence[str] = ("qa_wikidata",)
    task_limit: int | None = 120
    hon_data: Path | None = None
    task_data: Path | None = None
    train_data: Path | None = None
    probe: int = 400
    calib_probe: int = 192
    n_calib: int = 128
    data_dir: str | None = None
    seed: int = 0
    max_new_tokens: int = 24
    batch_size: int = 16
    threads: int = 2
    n_boot: int = 1000
    reference: str | None = None
    keep_models: bool = False
    extra: dict = field(default_factory=dict)


def eval_items(cfg: BenchConfig) -> list:
    """Held-out ("eval" split) honesty and task items; a user JSONL is taken as it is."""
    from ..evaluation.benchmarks import load_items

    items = []
    for b in cfg.benchmarks:
        items += load_items(b, data_dir=cfg.data_dir, split="eval", limit=cfg.limit, seed=cfg.seed)
    for b in cfg.task_benchmarks:
        items += load_items(b, data_dir=cfg.data_dir, split="eval", limit=cfg.task_limit, seed=cfg.seed)
    if not items:
        raise SurgeryError("No evaluation items: name at least one benchmark.")
    return items


def _write_lines(rows: Sequence[dict], path: Path) -> Path:
    from ..pair.data import write_jsonl

    return write_jsonl(list(rows), path)


def _sft_generator(cfg: BenchConfig):
    from ..evaluation.runner import HFGenerator
    from ..modelio import load_model, load_tokenizer, locate

    src = locate(cfg.sft, cfg.base)
    return HFGenerator(load_model(src), load_tokenizer(src), batch_size=cfg.batch_size)


def prepare_inputs(cfg: BenchConfig, methods: Sequence) -> tuple[Inputs, dict]:
    """Write the shared inputs under ``out_dir/data`` (reused when present); returns them and their cost."""
    from ..pair import data as D

    data = Path(cfg.out_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    gen = None

    def generator():
        nonlocal gen
        if gen is None:
            gen = _sft_generator(cfg)
        return gen

    kinds = {m.kind for m in methods}
    hon, task = cfg.hon_data, cfg.task_data
    if (hon is None or task is None) and "hcnr" in kinds:
        if not (data / "calib" / "d_hon.jsonl").is_file():
            t0 = time.perf_counter()
            D.write_calibration(data / "calib", generator=generator(), data_dir=cfg.data_dir, n_hon=cfg.n_calib,
                                n_task=cfg.n_calib, seed=cfg.seed, probe=cfg.calib_probe, probe_model="sft",
                                max_new_tokens=cfg.max_new_tokens)
            seconds["calibration (probe SFT)"] = round(time.perf_counter() - t0, 1)
        hon = hon or data / "calib" / "d_hon.jsonl"
        task = task or data / "calib" / "d_task.jsonl"
    train = cfg.train_data
    if train is None and kinds & {"rait-lora", "rait-full", "dpo", "dpo-full"}:
        train = data / "rait_pool.jsonl"
        if not train.is_file():
            from .rait import relabelled_pool

            t0 = time.perf_counter()
            _write_lines(relabelled_pool(generator(), data_dir=cfg.data_dir, probe=cfg.probe, seed=cfg.seed,
                                         max_new_tokens=cfg.max_new_tokens), train)
            seconds["RAIT pool (probe SFT)"] = round(time.perf_counter() - t0, 1)
    pairs = None
    dpo = [m for m in methods if m.kind in ("dpo", "dpo-full")]
    if dpo:
        from .dpo import fabricated_answers, preference_pairs
        from .rait import read_examples

        pairs = data / "dpo_pairs.jsonl"
        if not pairs.is_file():
            t0 = time.perf_counter()
            pool = read_examples(train)
            want = max((m.params.get("examples") or len(pool)) for m in dpo)
            prefix = pool[:min(len(pool), 2 * want)]
            rows = preference_pairs(prefix, fabricated_answers(generator(), prefix, max_new_tokens=cfg.max_new_tokens))
            _write_lines(rows, pairs)
            seconds["DPO pairs (SFT answers)"] = round(time.perf_counter() - t0, 1)
    del gen
    gc.collect()
    as_path = (lambda p: Path(p) if p else None)
    return Inputs(cfg.base, cfg.sft, as_path(hon), as_path(task), as_path(train), pairs), seconds


#: the shared input files each kind of method reads (only those enter its job hash)
USES = {"hcnr": ("hon_data", "task_data"), "rait": ("train_data",), "dpo": ("pairs_data",)}


def _job_hash(job: dict) -> str:
    keep = {k: v for k, v in job.items() if k not in ("work", "hash", "keep_models", "inputs")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path) -> str | None:
    if not path:
        return None
    from ..modelio import file_sha256

    return file_sha256(Path(path))


def run_worker(job: dict, job_file: Path) -> dict:
    """Run one job in a fresh interpreter; a failure names the method and keeps its log."""
    job_file.write_text(json.dumps(job, indent=1, default=str))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    log_path = job_file.with_suffix(".log")
    with open(log_path, "w") as logf:
        proc = subprocess.run([sys.executable, "-m", "surgery.baselines.worker", str(job_file)], env=env,
                              stdout=logf, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise SurgeryError(f"Method {job['method']!r} failed ({tail[0]}); see {log_path}.")
    return json.loads((Path(job["work"]) / "result.json").read_text())


def run_methods(cfg: BenchConfig, inputs: Inputs, items_file: Path, specs: Sequence[str],
                fresh: bool = False, run_missing: bool = True) -> list[dict]:
    from ..progress import progress

    results = []
    hashes = {k: _file_hash(getattr(inputs, k)) for k in ("hon_data", "task_data", "train_data", "pairs_data")}
    for spec in progress(list(specs), desc="methods", unit="method"):
        work = Path(cfg.out_dir) / "methods" / slug(spec)
        kind = parse_method(spec).kind
        used = USES.get(kind.split("-")[0], ())
        models = {"base": [inputs.base], "sft": [inputs.sft]}.get(kind, [inputs.base, inputs.sft])
        job = {"method": spec, "inputs": {k: str(v) if v else None for k, v in asdict(inputs).items()},
               "inputs_sha256": {k: hashes[k] for k in used}, "models": models,
               "items": str(items_file), "items_sha256": _file_hash(items_file),
               "threads": cfg.threads, "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens,
               "work": str(work), "keep_models": cfg.keep_models}
        job["hash"] = _job_hash(job)
        done = work / "result.json"
        if not fresh and done.is_file():
            prev = json.loads(done.read_text())
            if prev.get("job_hash") == job["hash"]:
                log.info("%s: reusing %s", spec, done)
                results.append(prev)
                continue
        if not run_missing:
            log.info("%s: no finished result, left out (report only)", spec)
            continue
        if work.exists():
            import shutil

            shutil.rmtree(work)
        work.mkdir(parents=True)
        log.info("running %s", spec)
        results.append(run_worker(job, work.parent / f"{slug(spec)}.job.json"))
        log.info("%s: %.1f s, peak RSS %s MB", spec, results[-1].get("method_seconds") or 0.0,
                 results[-1].get("peak_rss_mb"))
    return results


def summarize(cfg: BenchConfig, results: Sequence[dict], prep_seconds: dict) -> dict:
    """Per-method metrics with CIs, recovery against base/sft rows, paired differences to the reference."""
    evals = {r["name"]: load_json(r["eval"])["items"] for r in results}
    rows = []
    for r in results:
        row = {k: v for k, v in r.items() if k not in ("eval",)}
        row["metrics"] = method_metrics(evals[r["name"]], n_boot=cfg.n_boot, seed=cfg.seed)
        row["eval_file"] = r["eval"]
        rows.append(row)
    for row in rows:  # the base row's diff is against *this* SFT model (its cached run may predate it)
        if row["kind"] == "base":
            row.update(changed_parameters(Inputs(cfg.base, cfg.sft), row))
    by_name = {r["name"]: r for r in rows}
    f1_base = by_name.get("base", {}).get("metrics", {}).get("honesty_f1")
    f1_sft = by_name.get("sft", {}).get("metrics", {}).get("honesty_f1")
    for row in rows:
        row["recovery"] = recovery(row["metrics"]["honesty_f1"], f1_sft, f1_base)
    ref = cfg.reference if cfg.reference in evals else None
    if ref:
        for row in rows:
            a, b = evals[row["name"]], evals[ref]
            row["vs_reference"] = {
                "honesty_f1": paired_bootstrap(honesty_records(a), honesty_records(b), macro_f1, n_boot=cfg.n_boot,
                                               seed=cfg.seed),
                "task_accuracy": paired_bootstrap(task_records(a), task_records(b), answer_accuracy, n_boot=cfg.n_boot,
                                                  seed=cfg.seed),
            }
    benches: list[str] = []
    for row in rows:
        for b in row["metrics"]["per_benchmark"]:
            if b not in benches:
                benches.append(b)
    import platform

    import torch
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": {"cpus": os.cpu_count(), "threads": cfg.threads, "torch": torch.__version__,
                    "transformers": transformers.__version__, "python": platform.python_version()},
        "prep_seconds": prep_seconds,
        "honesty_benchmarks": benches,
        "reference": ref,
        "methods": rows,
    }


def run_bench(cfg: BenchConfig, fresh: bool = False, run_missing: bool = True) -> dict:
    """Run the comparison end to end; returns the summary written to ``out_dir/bench.json``.

    ``run_missing=False`` only summarises the methods that already have a result (report only).
    """
    methods = [parse_method(s) for s in cfg.methods]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise SurgeryError("A method is listed twice.")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = eval_items(cfg)
    items_file = _write_lines([it.to_dict() for it in items], out / "data" / "items.jsonl")
    inputs, prep = prepare_inputs(cfg, methods)
    results = run_methods(cfg, inputs, items_file, names, fresh=fresh, run_missing=run_missing)
    if not results:
        raise SurgeryError(f"No method has a result in {out} yet.")
    summary = summarize(cfg, results, prep)
    save_json(summary, out / "bench.json")
    write_text_atomic(out / "bench.md", markdown(summary))
    plot_pareto(summary, out / "pareto.png")
    plot_budget(summary, out / "budget.png")
    return summary
