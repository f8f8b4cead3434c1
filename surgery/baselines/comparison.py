"""The comparison: same pair, same data, same evaluation items, one process per method, one table.

:func:`run_comparison` prepares the shared inputs once (evaluation items; D_hon/D_task; the RAIT pool and
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
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..atomic import write_json_atomic, write_text_atomic
from ..devices import DeviceOptions, Placement, resolve
from ..errors import SurgeryError
from ..evaluation.benchmarks import load_items
from ..evaluation.evaluate import load_json, save_json
from ..evaluation.metrics import recovery
from ..evaluation.runner import HFGenerator
from ..hcnr.calibration_sets import write_calibration
from ..jsonl import jsonl_text
from ..modelio import file_sha256, load_model, load_tokenizer, locate
from ..progress import progress, quiet
from .dpo import fabricated_answers, preference_pairs
from .methods import Inputs, Method, changed_parameters, parse_method, slug
from .rait import read_examples, relabelled_pool
from .report import (
    answer_accuracy,
    honesty_records,
    macro_f1,
    markdown,
    method_metrics,
    paired_bootstrap,
    plot_budget,
    plot_pareto,
    task_records,
)

log = logging.getLogger(__name__)


@dataclass
class ComparisonConfig:
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
    device: str = "auto"
    dtype: str = "float32"

    @property
    def placement(self) -> Placement:
        """``device``/``dtype`` resolved (:mod:`surgery.devices`); refuses a device this machine lacks."""
        return resolve(DeviceOptions(device=self.device, dtype=self.dtype))


def eval_items(cfg: ComparisonConfig) -> list:
    """Held-out ("eval" split) honesty and task items; a user JSONL is taken as it is."""
    items = []
    for b in cfg.benchmarks:
        items += load_items(b, data_dir=cfg.data_dir, split="eval", limit=cfg.limit, seed=cfg.seed)
    for b in cfg.task_benchmarks:
        items += load_items(b, data_dir=cfg.data_dir, split="eval", limit=cfg.task_limit, seed=cfg.seed)
    if not items:
        raise SurgeryError("No evaluation items: name at least one benchmark.")
    return items


def _write_lines(rows: Sequence[dict], path: Path) -> Path:
    return write_text_atomic(path, jsonl_text(list(rows)))


def _sft_generator(cfg: ComparisonConfig) -> HFGenerator:
    src = locate(cfg.sft, cfg.base)
    placement = cfg.placement
    model = load_model(src, dtype=placement.dtype)
    if placement.device.type != "cpu":
        model = model.to(placement.device)
    return HFGenerator(model, load_tokenizer(src), batch_size=cfg.batch_size)


class _LazyGenerator:
    """The SFT model as a generator, loaded on first use (most reruns find every input already built)."""

    def __init__(self, cfg: ComparisonConfig):
        self.cfg, self.generator = cfg, None

    def __call__(self) -> HFGenerator:
        if self.generator is None:
            self.generator = _sft_generator(self.cfg)
        return self.generator


def _calibration(cfg: ComparisonConfig, data: Path, generator: _LazyGenerator, seconds: dict) -> tuple[Path, Path]:
    """D_hon/D_task for HCNR: the given files, else built under ``data/calib`` by probing the SFT model."""
    if not (data / "calib" / "d_hon.jsonl").is_file():
        t0 = time.perf_counter()
        write_calibration(
            data / "calib",
            generator=generator(),
            data_dir=cfg.data_dir,
            n_hon=cfg.n_calib,
            n_task=cfg.n_calib,
            seed=cfg.seed,
            probe=cfg.calib_probe,
            probe_model="sft",
            max_new_tokens=cfg.max_new_tokens,
        )
        seconds["calibration (probe SFT)"] = round(time.perf_counter() - t0, 1)
    return cfg.hon_data or data / "calib" / "d_hon.jsonl", cfg.task_data or data / "calib" / "d_task.jsonl"


def _rait_pool(cfg: ComparisonConfig, data: Path, generator: _LazyGenerator, seconds: dict) -> Path:
    """The IDK-relabelled RAIT pool under ``data``, built from the SFT model's answers when missing."""
    train = data / "rait_pool.jsonl"
    if not train.is_file():
        t0 = time.perf_counter()
        _write_lines(
            relabelled_pool(
                generator(), data_dir=cfg.data_dir, probe=cfg.probe, seed=cfg.seed, max_new_tokens=cfg.max_new_tokens
            ),
            train,
        )
        seconds["RAIT pool (probe SFT)"] = round(time.perf_counter() - t0, 1)
    return train


def _dpo_pairs(
    cfg: ComparisonConfig, data: Path, train: Path, dpo: Sequence[Method], generator: _LazyGenerator, seconds: dict
) -> Path:
    """Preference pairs for the largest DPO budget: honest IDK vs the SFT model's own made-up answers."""
    pairs = data / "dpo_pairs.jsonl"
    if not pairs.is_file():
        t0 = time.perf_counter()
        pool = read_examples(train)
        want = max((m.params.get("examples") or len(pool)) for m in dpo)
        prefix = pool[: min(len(pool), 2 * want)]
        rows = preference_pairs(prefix, fabricated_answers(generator(), prefix, max_new_tokens=cfg.max_new_tokens))
        _write_lines(rows, pairs)
        seconds["DPO pairs (SFT answers)"] = round(time.perf_counter() - t0, 1)
    return pairs


def prepare_inputs(cfg: ComparisonConfig, methods: Sequence[Method]) -> tuple[Inputs, dict]:
    """Write the shared inputs under ``out_dir/data`` (reused when present); returns them and their cost."""
    data = Path(cfg.out_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    generator = _LazyGenerator(cfg)
    kinds = {m.kind for m in methods}
    hon, task = cfg.hon_data, cfg.task_data
    if (hon is None or task is None) and "hcnr" in kinds:
        hon, task = _calibration(cfg, data, generator, seconds)
    train = cfg.train_data
    if train is None and kinds & {"rait-lora", "rait-full", "dpo", "dpo-full"}:
        train = _rait_pool(cfg, data, generator, seconds)
    pairs = None
    dpo = [m for m in methods if m.kind in ("dpo", "dpo-full")]
    if dpo:
        pairs = _dpo_pairs(cfg, data, train, dpo, generator, seconds)
    del generator
    gc.collect()

    def as_path(p):
        return Path(p) if p else None

    return Inputs(cfg.base, cfg.sft, as_path(hon), as_path(task), as_path(train), pairs), seconds


#: the precision every job had before ``--device``/``--dtype``: left out of the job (and its hash)
CPU_FLOAT32 = {"device": "cpu", "dtype": "float32"}

#: the shared input files each kind of method reads (only those enter its job hash)
USES = {"hcnr": ("hon_data", "task_data"), "rait": ("train_data",), "dpo": ("pairs_data",)}


def _job_hash(job: dict) -> str:
    keep = {k: v for k, v in job.items() if k not in ("work", "hash", "keep_models", "inputs")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path) -> str | None:
    return file_sha256(Path(path)) if path else None


def run_worker(job: dict, job_file: Path) -> dict:
    """Run one job in a fresh interpreter; a failure names the method and keeps its log."""
    write_json_atomic(job_file, job, indent=1, default=str)
    env = dict(os.environ)  # the worker imports what this process imports: same search path, no guessed root
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if quiet():  # `surgery -q bench`: the workers stay quiet too
        env["SURGERY_QUIET"] = "1"
    log_path = job_file.with_suffix(".log")
    with open(log_path, "w") as logf:
        proc = subprocess.run(
            [sys.executable, "-m", "surgery.baselines.worker", str(job_file)],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise SurgeryError(f"Method {job['method']!r} failed ({tail[0]}); see {log_path}.")
    return json.loads((Path(job["work"]) / "result.json").read_text())


def run_methods(
    cfg: ComparisonConfig,
    inputs: Inputs,
    items_file: Path,
    specs: Sequence[str],
    fresh: bool = False,
    run_missing: bool = True,
) -> list[dict]:
    """Each method's result: reused when its job hash matches, else computed in a fresh worker process."""
    results = []
    hashes = {k: _file_hash(getattr(inputs, k)) for k in ("hon_data", "task_data", "train_data", "pairs_data")}
    precision = cfg.placement.record()
    for spec in progress(list(specs), desc="methods", unit="method"):
        work = Path(cfg.out_dir) / "methods" / slug(spec)
        kind = parse_method(spec).kind
        used = USES.get(kind.split("-")[0], ())
        models = {"base": [inputs.base], "sft": [inputs.sft]}.get(kind, [inputs.base, inputs.sft])
        job = {
            "method": spec,
            "inputs": {k: str(v) if v else None for k, v in asdict(inputs).items()},
            "inputs_sha256": {k: hashes[k] for k in used},
            "models": models,
            "items": str(items_file),
            "items_sha256": _file_hash(items_file),
            "threads": cfg.threads,
            "batch_size": cfg.batch_size,
            "max_new_tokens": cfg.max_new_tokens,
            "work": str(work),
            "keep_models": cfg.keep_models,
        }
        if precision != CPU_FLOAT32:  # so results computed before --device/--dtype existed are still reused
            job["precision"] = precision
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
            shutil.rmtree(work)
        work.mkdir(parents=True)
        log.info("running %s", spec)
        results.append(run_worker(job, work.parent / f"{slug(spec)}.job.json"))
        log.info(
            "%s: %.1f s, peak RSS %s MB", spec, results[-1].get("method_seconds") or 0.0, results[-1].get("peak_rss_mb")
        )
    return results


def summarize(cfg: ComparisonConfig, results: Sequence[dict], prep_seconds: dict) -> dict:
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
                "honesty_f1": paired_bootstrap(
                    honesty_records(a), honesty_records(b), macro_f1, n_boot=cfg.n_boot, seed=cfg.seed
                ),
                "task_accuracy": paired_bootstrap(
                    task_records(a), task_records(b), answer_accuracy, n_boot=cfg.n_boot, seed=cfg.seed
                ),
            }
    benches: list[str] = []
    for row in rows:
        for b in row["metrics"]["per_benchmark"]:
            if b not in benches:
                benches.append(b)
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "threads": cfg.threads,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "precision": cfg.placement.record(),
        "prep_seconds": prep_seconds,
        "honesty_benchmarks": benches,
        "reference": ref,
        "methods": rows,
    }


def run_comparison(cfg: ComparisonConfig, fresh: bool = False, run_missing: bool = True) -> dict:
    """Run the comparison end to end; returns the summary written to ``out_dir/bench.json``.

    ``run_missing=False`` only summarises the methods that already have a result (report only).
    """
    resolve(DeviceOptions(device=cfg.device, dtype=cfg.dtype))  # a device this machine lacks: refused before work
    locate(cfg.base), locate(cfg.sft, cfg.base)  # both models exist, whichever methods use them
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
