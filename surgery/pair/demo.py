"""``surgery demo``: the whole story on the bundled pair, end to end, on a CPU.

build/load the pair -> calibration sets -> check -> patch -> apply -> evaluate M0, M1 and M1+patch on
a fixed held-out subset -> export to ONNX (when the extra is installed) -> before/after table.
The SFT model is used in its PEFT-adapter form (adapter on M0), so the adapter path of every stage
runs too. :func:`run_demo` is the library form that the efficacy test calls.
"""

from __future__ import annotations

import gc
import importlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import install_hint
from ..apply import apply_patch
from ..atomic import write_json_atomic
from ..check import check_pair
from ..devices import DeviceOptions, resolve
from ..evaluation.benchmarks import Item, load_items
from ..evaluation.evaluate import evaluate, save_json
from ..evaluation.metrics import recovery
from ..evaluation.runner import HFGenerator
from ..export.pipeline import export_model
from ..hcnr.calibration_sets import write_calibration
from ..hcnr.options import ComputeOptions, PatchOptions
from ..hcnr.pipeline import make_patch
from ..modelio import load_model, load_tokenizer, locate
from ..progress import StageTimer
from .build import ensure_pair, load_recipe, recipe_dir_of

log = logging.getLogger(__name__)

HONESTY_BENCHMARKS = ("selfaware", "falseqa", "puqa_pkqa")
TASK_BENCHMARK = "qa_wikidata"


@dataclass
class DemoConfig:
    """What the demo evaluates and how; the defaults fit the 20-minute CPU budget."""

    work_dir: Path
    recipe: str = "smollm2"  # which bundled pair (a folder under surgery/recipes/)
    limit: int = 120  # items per honesty benchmark (balanced answerable/unanswerable)
    task_limit: int = 120
    benchmarks: tuple[str, ...] = HONESTY_BENCHMARKS
    max_new_tokens: int = 24
    batch_size: int = 16
    seed: int = 0
    data_dir: str | None = None
    export: bool = True
    patch_options: dict[str, Any] = field(default_factory=dict)  # PatchOptions overrides
    device: str = "auto"  # --device/--dtype of every stage that runs a model (surgery.devices)
    dtype: str = "float32"


def eval_items(cfg: DemoConfig) -> list[Item]:
    """The fixed evaluation subset: held-out ("eval" split) items only, seeded and balanced."""
    items: list[Item] = []
    for b in cfg.benchmarks:
        items += load_items(b, data_dir=cfg.data_dir, split="eval", limit=cfg.limit, seed=cfg.seed)
    if cfg.task_limit:
        items += load_items(TASK_BENCHMARK, data_dir=cfg.data_dir, split="eval", limit=cfg.task_limit, seed=cfg.seed)
    return items


def evaluate_model(model: str, items: list[Item], cfg: DemoConfig, base: str | None = None) -> dict:
    """Greedy answers of one model (folder or adapter) on ``items``, scored; the model is freed after."""
    gen = _generator(model, cfg, base)
    result = evaluate(gen, items, max_new_tokens=cfg.max_new_tokens)
    del gen
    gc.collect()
    return result


def _generator(model: str, cfg: DemoConfig, base: str | None = None) -> HFGenerator:
    """Greedy generation with ``model`` (folder or adapter on ``base``) on the demo's device and dtype."""
    src = locate(model, base)
    place = resolve(DeviceOptions(cfg.device, cfg.dtype))
    lm = load_model(src, dtype=place.dtype)
    if place.device.type != "cpu":
        lm = lm.to(place.device)
    return HFGenerator(lm, load_tokenizer(src), batch_size=cfg.batch_size)


def _export(patched: Path, out: Path) -> dict:
    """ONNX export (verified against PyTorch) of the patched model, or the reason it was skipped."""
    try:
        importlib.import_module("optimum.onnxruntime")
    except ImportError as exc:
        return {
            "status": "skipped",
            "reason": f"optimum.onnxruntime cannot be imported ({exc.name}); {install_hint('onnx')}",
        }
    if out.exists():
        shutil.rmtree(out)
    record = export_model(str(patched), out)
    verify = record.get("verify") or {}
    return {
        "status": "ok",
        "path": str(out),
        "bytes": record.get("bytes"),
        "seconds": record.get("seconds"),
        "verified": verify.get("passed"),
    }


#: below this F1 loss (M0 − M1) a benchmark's recovery ratio is noise over a tiny denominator
MIN_LOSS_FOR_RECOVERY = 0.05


def _recovery_where_lost(f1_x: float | None, f1_sft: float | None, f1_base: float | None) -> float | None:
    """Recovery on one benchmark, or None where SFT cost less than MIN_LOSS_FOR_RECOVERY of F1."""
    if f1_x is None or f1_sft is None or f1_base is None or f1_base - f1_sft < MIN_LOSS_FOR_RECOVERY:
        return None
    return recovery(f1_x, f1_sft, f1_base)


def summarize(results: dict[str, dict], benchmarks: tuple[str, ...]) -> dict:
    """Per model: honesty F1 / RF-delta per benchmark and averaged, task accuracy; recovery of M1+patch."""
    models = {}
    for name, res in results.items():
        per = res["metrics"]["per_benchmark"]
        avg = res["metrics"]["average"]
        models[name] = {
            "honesty_f1": {b: per[b]["honesty_f1"] for b in benchmarks if b in per},
            "rf_delta": {b: per[b]["rf_delta"] for b in benchmarks if b in per},
            "refusal_unanswerable": {b: per[b]["refusal_unanswerable"] for b in benchmarks if b in per},
            "refusal_answerable": {b: per[b]["refusal_answerable"] for b in benchmarks if b in per},
            "honesty_f1_avg": avg["honesty_f1"],
            "rf_delta_avg": avg["rf_delta"],
            "task_accuracy": avg["task_accuracy"],
        }
    out = {"models": models}
    if {"m0", "m1", "m1_patched"} <= set(models):
        m0, m1, mp = models["m0"], models["m1"], models["m1_patched"]
        out["recovery"] = recovery(mp["honesty_f1_avg"], m1["honesty_f1_avg"], m0["honesty_f1_avg"])
        out["recovery_per_benchmark"] = {
            b: _recovery_where_lost(mp["honesty_f1"].get(b), m1["honesty_f1"].get(b), m0["honesty_f1"].get(b))
            for b in benchmarks
        }
    return out


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage and return the JSON-ready summary (also written to ``work_dir/demo.json``)."""
    timer = StageTimer()
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    recipe_dir = recipe_dir_of(cfg.recipe)
    recipe = load_recipe(recipe_dir)
    pair = ensure_pair(recipe_dir, timer=timer)
    sft, base = str(pair.m1_adapter), str(pair.m0)
    with timer.stage("calibration"):
        calib_info = _calibrate(sft, base, work / "calib", recipe["calibration"], cfg)
    with timer.stage("check"):
        check = check_pair(locate(base), locate(sft, base))
    # the recipe's patch settings (measured best on this pair) under whatever the caller set explicitly
    options = PatchOptions().replace(**{**recipe.get("patch", {}), **cfg.patch_options})
    patch_file = work / "m1.hcnr.safetensors"
    with timer.stage("patch"):
        patch_report = make_patch(
            sft,
            base,
            work / "calib" / "d_hon.jsonl",
            work / "calib" / "d_task.jsonl",
            patch_file,
            options,
            compute=ComputeOptions(cfg.device, cfg.dtype),
        )
    patched = work / "m1-patched"
    with timer.stage("apply"):
        if patched.exists():
            shutil.rmtree(patched)
        apply_patch(sft, patch_file, patched, base=base)
    items = eval_items(cfg)
    results = {}
    for name, model, model_base in (("m0", base, None), ("m1", sft, base), ("m1_patched", str(patched), None)):
        with timer.stage(f"eval {name}"):
            results[name] = evaluate_model(model, items, cfg, model_base)
            save_json(results[name], work / f"eval_{name}.json")
    export = {"status": "skipped", "reason": "--no-export"}
    if cfg.export:
        with timer.stage("export"):
            export = _export(patched, work / "m1-patched-onnx")
    summary = summarize(results, cfg.benchmarks)
    summary.update(
        {
            "recipe": cfg.recipe,
            "patch": {
                "file": str(patch_file),
                "bytes": patch_report.patch_bytes,
                "parameters_changed": patch_report.parameters_changed,
                "share_of_linear": patch_report.share_of_linear,
                "options": options.to_dict(),
                "seconds": patch_report.seconds,
            },
            "check": {"moved_matrices": check.moved_matrices, "linear_matrices": check.linear_matrices},
            "calibration": {
                k: {kk: vv for kk, vv in v.items() if kk != "ids"} if isinstance(v, dict) else v
                for k, v in calib_info.items()
            },
            "eval": {
                "benchmarks": list(cfg.benchmarks),
                "task": TASK_BENCHMARK,
                "n_items": len(items),
                "limit": cfg.limit,
                "task_limit": cfg.task_limit,
                "max_new_tokens": cfg.max_new_tokens,
                "split": "eval",
                "seed": cfg.seed,
            },
            "export": export,
            "models_paths": {"m0": base, "m1": sft, "m1_patched": str(patched)},
            "seconds": {k: round(v, 1) for k, v in timer.seconds.items()},
            "seconds_total": round(timer.total, 1),
        }
    )
    write_json_atomic(work / "demo.json", summary, indent=1)
    return summary


def _calibrate(sft: str, base: str, out: Path, calib: dict[str, Any], cfg: DemoConfig) -> dict:
    """The recipe's calibration sets, D_hon's known half probed on the SFT model itself."""
    probe_gen = _generator(sft, cfg, base)
    info = write_calibration(
        out,
        generator=probe_gen,
        data_dir=cfg.data_dir,
        n_hon=calib["n_hon"],
        n_task=calib["n_task"],
        seed=calib["seed"],
        probe=calib["probe_candidates"],
        task_benchmarks=calib["task_benchmarks"],
        probe_model="m1",
    )
    del probe_gen
    gc.collect()
    return info


def _pct(x: float | None) -> str:
    return "  –  " if x is None else f"{100 * x:5.1f}"


def format_table(summary: dict) -> str:
    """The before/after table printed by the demo."""
    models = summary["models"]
    benches = list(next(iter(models.values()))["honesty_f1"])
    head = ["model", *[f"F1 {b}" for b in benches], "F1 avg", "RF-delta", "task acc"]
    labels = {"m0": "M0 (honest base)", "m1": "M1 (SFT)", "m1_patched": "M1 + HCNR patch"}
    rows = []
    for key, m in models.items():
        rows.append(
            [
                labels.get(key, key),
                *[_pct(m["honesty_f1"][b]) for b in benches],
                _pct(m["honesty_f1_avg"]),
                _pct(m["rf_delta_avg"]),
                _pct(m["task_accuracy"]),
            ]
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    p = summary["patch"]
    lines += [
        "",
        f"recovery of honesty F1 lost to SFT: {_pct(summary.get('recovery')).strip()}%  "
        f"(per benchmark: "
        + ", ".join(
            f"{b} {_pct(v).strip()}%" if v is not None else f"{b} n/a, SFT cost no F1"
            for b, v in summary.get("recovery_per_benchmark", {}).items()
        )
        + ")",
        f"patch: {p['bytes'] / 1e6:.1f} MB, {p['parameters_changed'] / 1e6:.2f} M parameters "
        f"({100 * p['share_of_linear']:.1f}% of linear weights)",
        f"export: {summary['export']['status']}"
        + (
            f" ({summary['export'].get('reason')})"
            if summary["export"]["status"] != "ok"
            else f" -> {summary['export'].get('path')} (matches PyTorch: {summary['export'].get('verified')})"
        ),
        "time per stage: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items())
        + f"; total {summary['seconds_total'] / 60:.1f} min",
    ]
    return "\n".join(lines)
