"""The recipe patch against LoRA re-tuning on the same 256 examples, side by side (issue 13's speed goal).

\b
    SURGERY_CACHE=/work/main/.cache python -m benchmarks.patch_speed --threads 2
    python -m benchmarks.patch_speed --eval --limit 20 --task-limit 20   # adds honesty F1 / task accuracy

Inputs: the bundled pair (M0 base, M1 SFT as a merged folder as the comparison measures it, or with
``--sft-form adapter`` as its LoRA adapter on M0 as the demo patches it, for both methods) and the
recipe's calibration sets, built as ``surgery demo`` builds them (the recipe's "calibration" section,
D_hon's known half probed on M1) into ``WORK_DIR/calib/`` and reused when both files are there.

Both methods run one after the other in their own child process, at ``--threads`` threads, so each
peak RSS (``VmHWM``, written by the child at exit; see :mod:`benchmarks.scale_memory`) is its own:

- the recipe's patch (recipe.json "patch": ``protect``, R_IW 0.125 x R_CW 0.8) through
  :func:`surgery.hcnr.pipeline.make_patch` on CPU in float32, from a clean work folder;
- LoRA re-tuning of M1 on the same D_hon + D_task examples (prompt/response pairs) exactly as
  ``surgery bench``'s ``rait-lora`` trains (:func:`surgery.baselines.rait.run_rait` with
  :class:`~surgery.baselines.rait.RaitOptions` defaults: r 16, alpha 32, lr 5e-4, 1 epoch, batch 8,
  96 tokens), the merged model written as ``rait-lora`` writes it.

"seconds" is each method's own time measured inside its child (the comparison's definition: the patch
call; training + merge + write for LoRA); "child s" adds interpreter start and imports. Prints one
markdown table, the ratio patch / LoRA and the patch's per-stage seconds (its ``report.json``); exits 1
when the ratio is above ``--max-ratio`` (issue 13: at most half). ``--eval`` also scores M1 + patch and
M1 + LoRA on the demo's held-out items (:func:`surgery.pair.demo.eval_items`, ``--limit`` per honesty
benchmark, ``--task-limit`` qa_wikidata items) in this process, after both timings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from benchmarks.scale_memory import ChildPeak, peak_of
from surgery.atomic import write_json_atomic
from surgery.commands.options import add_options, options_from
from surgery.errors import SurgeryError
from surgery.options import opt

log = logging.getLogger(__name__)

#: run in each child as ``python -c CHILD_CODE KIND SPEC_JSON RESULT_JSON`` (under scale_memory's VmHWM wrapper)
CHILD_CODE = "from benchmarks.patch_speed import child_main; child_main()"
PATCH, LORA = "patch", "lora"
#: the file names of the calibration sets inside ``WORK_DIR/calib`` (what the demo writes)
CALIB_FILES = ("d_hon.jsonl", "d_task.jsonl")
#: the pipeline's stages in the order they run (``report.json`` stores them sorted by name)
STAGE_ORDER = ("load", "capture", "forward", "fisher", "selection", "hessians", "compensation", "write")


class BenchmarkError(SurgeryError):
    """A measurement could not be made (a child failed, calibration could not be built)."""


@dataclass(frozen=True)
class PatchSpeedRun:
    """What one run of this script measures."""

    threads: int = opt(2, "Torch (and OpenMP) threads of both children and of the evaluation.", low=1)
    work_dir: str = opt(
        ".cache/bench/patch-speed", "Work folder: calib/ (reused when present), the patch, the LoRA model."
    )
    recipe: str = opt("smollm2", "The bundled pair and recipe (a folder under surgery/recipes/).")
    sft_form: str = opt(
        "merged",
        "M1 as the merged folder (as the comparison measures it) or its LoRA adapter on M0 (as the demo patches it).",
        choices=("merged", "adapter"),
    )
    data_dir: str | None = opt(None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the bundled samples).")
    max_ratio: float = opt(0.5, "Exit 1 when patch seconds / LoRA seconds is above this.", above=0)
    eval: bool = opt(False, "Also score M1 + patch and M1 + LoRA on the demo's held-out items.")
    limit: int = opt(20, "--eval: items per honesty benchmark (balanced).", low=1)
    task_limit: int = opt(20, "--eval: qa_wikidata items.", low=0)
    max_new_tokens: int = opt(24, "--eval: greedy tokens per answer.", low=1)
    eval_batch_size: int = opt(16, "--eval: questions per generation batch.", low=1)
    keep: bool = opt(False, "Keep the patch and the LoRA model in the work folder (always kept with --eval).")
    json: str | None = opt(None, "Also write the numbers here.")


@dataclass(frozen=True)
class MethodRow:
    """One measured method: its own seconds, its child's wall time and peak RSS, what it saw and scored."""

    method: str
    seconds: float
    child_seconds: float
    peak_rss_mb: float
    examples: int
    honesty_f1: float | None = None
    task_accuracy: float | None = None


@dataclass(frozen=True)
class SpeedResult:
    """Both rows, the patch's per-stage seconds and the ratio goal."""

    threads: int
    patch: MethodRow
    lora: MethodRow
    stages: dict[str, float]
    max_ratio: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Patch seconds over LoRA seconds (each method's own time)."""
        return self.patch.seconds / self.lora.seconds

    @property
    def passed(self) -> bool:
        return self.ratio <= self.max_ratio


# --- formatting (no model: tested in the unit tier)


def ordered_stages(stages: dict[str, float]) -> dict[str, float]:
    """``stages`` in pipeline order (:data:`STAGE_ORDER`), stages it does not know last in their own order."""
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _cell(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def format_table(result: SpeedResult) -> str:
    """The markdown table, the ratio line and the patch's per-stage table."""
    rows = (result.patch, result.lora)
    scored = any(r.honesty_f1 is not None or r.task_accuracy is not None for r in rows)
    head = ["method", "seconds", "child s", "peak RSS MB", "examples"]
    if scored:
        head += ["honesty F1", "task acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, f"{r.seconds:.1f}", f"{r.child_seconds:.1f}", f"{r.peak_rss_mb:.0f}", str(r.examples)]
        if scored:
            cells += [_cell(None if r.honesty_f1 is None else 100 * r.honesty_f1, ".1f")]
            cells += [_cell(None if r.task_accuracy is None else 100 * r.task_accuracy, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    verdict = "PASS" if result.passed else "FAIL"
    lines += [
        "",
        f"patch / LoRA: {result.ratio:.2f} (goal <= {result.max_ratio:g}: {verdict}), {result.threads} thread(s)",
        "",
        "| patch stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in result.stages.items()]
    lines.append(f"| all stages | {sum(result.stages.values()):.1f} |")
    return "\n".join(lines)


def result_record(run: PatchSpeedRun, result: SpeedResult) -> dict[str, Any]:
    """The ``--json`` record: the run's options, both rows, the ratio and the patch's stages."""
    return {
        "run": asdict(run),
        "threads": result.threads,
        "rows": [asdict(result.patch), asdict(result.lora)],
        "ratio": round(result.ratio, 4),
        "max_ratio": result.max_ratio,
        "passed": result.passed,
        "patch_stages": result.stages,
        **result.details,
    }


# --- inputs


def ensure_calibration(folder: Path, build: Callable[[Path], object]) -> tuple[Path, Path]:
    """D_hon and D_task in ``folder``: reused when both files exist, else ``build(folder)`` writes them."""
    hon, task = (folder / name for name in CALIB_FILES)
    if hon.is_file() and task.is_file():
        log.info("reusing the calibration sets in %s", folder)
        return hon, task
    build(folder)
    if not (hon.is_file() and task.is_file()):
        raise BenchmarkError(
            f"Building the calibration sets wrote no {CALIB_FILES[0]} and {CALIB_FILES[1]} in {folder}."
        )
    return hon, task


def _demo_calibration(run: PatchSpeedRun, sft_adapter: str, base: str, recipe: dict) -> Callable[[Path], object]:
    """The demo's own calibration step (D_hon's known half probed on M1 in its adapter form)."""
    from surgery.pair.demo import DemoConfig, _calibrate

    cfg = DemoConfig(work_dir=Path(run.work_dir), recipe=run.recipe, data_dir=run.data_dir)
    return lambda folder: _calibrate(sft_adapter, base, folder, recipe["calibration"], cfg)


# --- the children


def child_main() -> None:
    """Entry point of a measuring child: ``KIND SPEC_JSON RESULT_JSON`` on the command line."""
    kind, spec_file, result_file = sys.argv[1:4]
    spec = json.loads(Path(spec_file).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(spec["threads"])
    result = _child_patch(spec) if kind == PATCH else _child_lora(spec)
    write_json_atomic(result_file, result)


def _child_patch(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    from surgery.hcnr.options import ComputeOptions, PatchOptions
    from surgery.hcnr.pipeline import make_patch

    options = PatchOptions(**spec["options"])
    t0 = time.perf_counter()
    report = make_patch(
        spec["sft"], spec["base"], spec["hon"], spec["task"], spec["out"], options, compute=ComputeOptions(device="cpu")
    )
    return {"seconds": time.perf_counter() - t0, "examples": sum(report.calibration_examples.values())}


def _child_lora(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    from surgery.baselines.rait import RaitOptions, read_examples, run_rait

    examples = read_examples(spec["hon"]) + read_examples(spec["task"])
    options = RaitOptions(mode="lora", examples=len(examples))
    t0 = time.perf_counter()
    info = run_rait(spec["sft"], spec["out"], examples, options, base=spec["base"])
    return {"seconds": time.perf_counter() - t0, "examples": info["examples_used"], "info": info}


def run_child(kind: str, spec: dict[str, Any], threads: int) -> tuple[dict[str, Any], ChildPeak]:
    """Run one measuring child; returns what it wrote and its peak. A failed child raises with its output."""
    with tempfile.TemporaryDirectory(prefix=f"surgery-speed-{kind}-") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps({**spec, "threads": threads}))
        log.info("%s child: %d thread(s)", kind, threads)
        peak = peak_of(["-c", CHILD_CODE, kind, str(spec_file), str(result_file)], threads)
        if peak.returncode != 0 or not result_file.is_file():
            raise BenchmarkError(f"The {kind} child failed (exit {peak.returncode}):\n{peak.output_tail}")
        return json.loads(result_file.read_text()), peak


# --- the measurement


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _patch_label(options: dict[str, Any]) -> str:
    shape = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"HCNR recipe patch ({shape})"


def _evaluate(run: PatchSpeedRun, sft: str, base: str, patch: Path, lora_model: Path, work: Path) -> dict[str, dict]:
    """Honesty F1 / task accuracy of M1 + patch and M1 + LoRA on the demo's held-out items."""
    from surgery.apply import apply_patch
    from surgery.pair.demo import DemoConfig, eval_items, evaluate_model, summarize

    cfg = DemoConfig(
        work_dir=work,
        recipe=run.recipe,
        limit=run.limit,
        task_limit=run.task_limit,
        max_new_tokens=run.max_new_tokens,
        batch_size=run.eval_batch_size,
        data_dir=run.data_dir,
    )
    patched = work / "m1-patched"
    _remove(patched)
    apply_patch(sft, patch, patched, base=base)
    items = eval_items(cfg)
    results = {name: evaluate_model(str(model), items, cfg) for name, model in ((PATCH, patched), (LORA, lora_model))}
    models = summarize(results, cfg.benchmarks)["models"]
    return {k: {"honesty_f1": m["honesty_f1_avg"], "task_accuracy": m["task_accuracy"]} for k, m in models.items()}


def measure(run: PatchSpeedRun) -> SpeedResult:
    """Build (or reuse) the inputs, time both children one after the other, optionally evaluate both."""
    import torch

    from surgery.pair.build import ensure_pair, load_recipe, recipe_dir_of

    torch.set_num_threads(run.threads)
    work = Path(run.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    recipe_dir = recipe_dir_of(run.recipe)
    recipe = load_recipe(recipe_dir)
    pair = ensure_pair(recipe_dir)
    sft, base = str(pair.m1 if run.sft_form == "merged" else pair.m1_adapter), str(pair.m0)
    hon, task = ensure_calibration(work / "calib", _demo_calibration(run, str(pair.m1_adapter), base, recipe))
    patch, lora_model = work / "m1.hcnr.safetensors", work / "m1-lora"
    patch_report = patch.with_name(patch.name + ".report.json")
    _remove(patch, patch.with_name(patch.name + ".work"), patch_report, lora_model, work / "m1-lora-adapter")
    options = recipe.get("patch", {})
    inputs = {"sft": sft, "base": base, "hon": str(hon), "task": str(task)}

    p_out, p_peak = run_child(PATCH, {**inputs, "out": str(patch), "options": options}, run.threads)
    report = json.loads(patch_report.read_text())
    l_out, l_peak = run_child(LORA, {**inputs, "out": str(lora_model)}, run.threads)

    scores: dict[str, dict] = {}
    if run.eval:
        scores = _evaluate(run, sft, base, patch, lora_model, work)
    elif not run.keep:
        _remove(patch, patch_report, lora_model, work / "m1-lora-adapter")
    lora_opts = l_out["info"]["options"]
    rows = {
        PATCH: MethodRow(_patch_label(options), p_out["seconds"], p_peak.seconds, p_peak.peak_mb, p_out["examples"]),
        LORA: MethodRow(
            f"LoRA re-tuning (r {lora_opts['r']}, lr {lora_opts['lr']:g}, 1 epoch, batch {lora_opts['batch_size']})",
            l_out["seconds"],
            l_peak.seconds,
            l_peak.peak_mb,
            l_out["examples"],
        ),
    }
    rows = {k: MethodRow(**{**asdict(r), **_rounded(asdict(r)), **scores.get(k, {})}) for k, r in rows.items()}
    details = {
        "patch_report": {k: report.get(k) for k in ("device", "dtype", "threads", "patch_bytes", "reused")}
        | {k: report.get(k) for k in ("parameters_changed", "share_of_linear", "seconds_total", "options")},
        "lora": {k: l_out["info"].get(k) for k in ("steps", "train_seconds", "loss_first", "loss_last", "options")},
        "calibration": {"honesty": str(hon), "task": str(task)},
        "pair": {"base": base, "sft": sft},
        "torch": torch.__version__,
        "cpu": _cpu_name(),
    }
    if report.get("reused"):
        log.warning("the patch reused parts of an earlier run: %s", report["reused"])
    return SpeedResult(run.threads, rows[PATCH], rows[LORA], ordered_stages(report["seconds"]), run.max_ratio, details)


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Seconds to 0.01 s and megabytes to 0.1 MB: what a timer and VmHWM can vouch for."""
    return {
        "seconds": round(row["seconds"], 2),
        "child_seconds": round(row["child_seconds"], 2),
        "peak_rss_mb": round(row["peak_rss_mb"], 1),
    }


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


@click.command(help=__doc__)
@add_options(PatchSpeedRun)
def main(**kwargs: Any) -> None:
    """Measure both methods, print the table, exit 1 when the patch is slower than the goal."""
    run = options_from(PatchSpeedRun, kwargs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = measure(run)
    except SurgeryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(format_table(result))
    if run.json:
        write_json_atomic(run.json, result_record(run, result), indent=1)
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
