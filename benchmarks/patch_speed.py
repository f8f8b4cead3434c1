"""The recipe patch against LoRA re-tuning on the same 256 examples, side by side (issue 13's speed goal).

\b
    SURGERY_CACHE=/work/main/.cache python -m benchmarks.patch_speed --threads 2
    python -m benchmarks.patch_speed --eval --limit 20 --task-limit 20   # adds honesty F1 / task accuracy
    python -m benchmarks.patch_speed --dtype float32 --lora-dtype float32   # the float32 rows only

Inputs: the bundled pair (M0 base, M1 SFT as a merged folder as the comparison measures it, or with
``--sft-form adapter`` as its LoRA adapter on M0 as the demo patches it, for both methods) and the
recipe's calibration sets, built as ``surgery demo`` builds them (the recipe's "calibration" section,
D_hon's known half probed on M1) into ``WORK_DIR/calib/`` and reused when both files are there.

Every row runs one after the other in its own child process, at ``--threads`` threads, so each
peak RSS (``VmHWM``, written by the child at exit; see :mod:`benchmarks.scale_memory`) is its own:

- the recipe's patch (recipe.json "patch": ``protect``, R_IW 0.125 x R_CW 0.8) through
  :func:`surgery.hcnr.pipeline.make_patch` on CPU, from a clean work folder, once per ``--dtype``
  (default float32 and bfloat16: bf16 weights and matmuls, float32/float64 accumulators);
- LoRA re-tuning of M1 on the same D_hon + D_task examples (prompt/response pairs) exactly as
  ``surgery bench``'s ``rait-lora`` trains (:func:`surgery.baselines.rait.run_rait` with
  :class:`~surgery.baselines.rait.RaitOptions` defaults: r 16, alpha 32, lr 5e-4, 1 epoch, batch 8,
  96 tokens), the merged model written as ``rait-lora`` writes it, once per ``--lora-dtype`` (default
  both; float32: today's loop; bfloat16: the same loop under bf16 autocast, float32 master weights).

"seconds" is each row's own time measured inside its child (the comparison's definition: the patch
call; training + merge + write for LoRA); "child s" adds interpreter start and imports. Prints one
markdown table with each row's time over the goal's LoRA row, the goal ratio, the patch's per-stage
seconds per dtype (its ``report.json``) and, when a float32 patch was made, how many of its selected
neurons every other patch selected too (issue 13 asks >= 95% for bf16). The goal ratio is the patch
row ``--goal-patch`` (default: the fastest) over the LoRA row in float32 (the re-tuning as the issue
measured it; the first LoRA row when float32 is not measured); exits 1 when it is above ``--max-ratio``
(issue 13: at most half). ``--eval`` also scores M1 + each patch and each LoRA model on the demo's
held-out items (:func:`surgery.pair.demo.eval_items`, ``--limit`` per honesty benchmark, ``--task-limit``
qa_wikidata items) in this process, after all timings, and each patch against the float32 one on the same
items (paired bootstrap intervals of the F1 and accuracy differences, identical answers).
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
from surgery.devices import DTYPES
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
#: the dtype whose patch the others' neurons are compared with, and whose LoRA row the goal is measured against
REFERENCE_DTYPE = "float32"
#: how a dtype is written in row labels and ratio lines
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


class BenchmarkError(SurgeryError):
    """A measurement could not be made (a child failed, calibration could not be built)."""


@dataclass(frozen=True)
class PatchSpeedRun:
    """What one run of this script measures."""

    threads: int = opt(2, "Torch (and OpenMP) threads of every child and of the evaluation.", low=1)
    work_dir: str = opt(
        ".cache/bench/patch-speed", "Work folder: calib/ (reused when present), the patches, the LoRA models."
    )
    recipe: str = opt("smollm2", "The bundled pair and recipe (a folder under surgery/recipes/).")
    sft_form: str = opt(
        "merged",
        "M1 as the merged folder (as the comparison measures it) or its LoRA adapter on M0 (as the demo patches it).",
        choices=("merged", "adapter"),
    )
    dtype: tuple[str, ...] = opt(
        ("float32", "bfloat16"),
        "Patch rows: one patch per compute dtype given (repeatable), on the CPU.",
        choices=DTYPES,
        multiple=True,
    )
    lora_dtype: tuple[str, ...] = opt(
        ("float32", "bfloat16"),
        "LoRA rows: one re-tuning per dtype given (repeatable); bfloat16 trains under bf16 autocast.",
        choices=DTYPES,
        multiple=True,
    )
    goal_patch: str = opt(
        "best",
        "The patch row the goal ratio is taken on: the fastest, or the one of a dtype.",
        choices=("best", *DTYPES),
    )
    data_dir: str | None = opt(None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the bundled samples).")
    max_ratio: float = opt(0.5, "Exit 1 when the goal ratio (patch seconds / LoRA seconds) is above this.", above=0)
    eval: bool = opt(False, "Also score M1 + each patch and each LoRA model on the demo's held-out items.")
    limit: int = opt(20, "--eval: items per honesty benchmark (balanced).", low=1)
    task_limit: int = opt(20, "--eval: qa_wikidata items.", low=0)
    max_new_tokens: int = opt(24, "--eval: greedy tokens per answer.", low=1)
    eval_batch_size: int = opt(16, "--eval: questions per generation batch.", low=1)
    keep: bool = opt(False, "Keep the patches and the LoRA models in the work folder (always kept with --eval).")
    json: str | None = opt(None, "Also write the numbers here.")

    def __post_init__(self) -> None:
        if not self.dtype or not self.lora_dtype:
            raise BenchmarkError("Give at least one --dtype and one --lora-dtype: the goal compares a patch with LoRA.")
        if self.goal_patch != "best" and self.goal_patch not in self.dtype:
            raise BenchmarkError(f"--goal-patch {self.goal_patch} names a dtype no --dtype measures.")


@dataclass(frozen=True)
class MethodRow:
    """One measured row: its own seconds, its child's wall time and peak RSS, what it saw and scored."""

    method: str
    seconds: float
    child_seconds: float
    peak_rss_mb: float
    examples: int
    honesty_f1: float | None = None
    task_accuracy: float | None = None
    kind: str = PATCH  # PATCH | LORA
    dtype: str = REFERENCE_DTYPE


@dataclass(frozen=True)
class Overlap:
    """How many of a reference patch's selected neurons another patch selected too (same weights, same unit)."""

    share: float  # Σ |A ∩ B| / Σ |A| over the reference's matrices (a matrix the other leaves alone counts 0)
    min_share: float  # the lowest per-matrix share
    min_matrix: str  # where it is
    matrices_reference: int
    matrices_other: int
    matrices_both: int
    per_matrix: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeedResult:
    """Every row, each patch's per-stage seconds, the neuron overlap with the float32 patch and the goal."""

    threads: int
    rows: tuple[MethodRow, ...]
    stages: dict[str, dict[str, float]]  # patch dtype -> stage -> seconds
    max_ratio: float
    goal_patch: str = "best"
    overlap: dict[str, Overlap] = field(default_factory=dict)  # patch dtype -> against the float32 patch
    details: dict[str, Any] = field(default_factory=dict)

    def of(self, kind: str) -> list[MethodRow]:
        return [r for r in self.rows if r.kind == kind]

    @property
    def lora_goal(self) -> MethodRow:
        """The LoRA row the goal is measured against: float32 (the issue's re-tuning), else the first."""
        loras = self.of(LORA)
        return next((r for r in loras if r.dtype == REFERENCE_DTYPE), loras[0])

    @property
    def patch_goal(self) -> MethodRow:
        """The patch row the goal is taken on: ``goal_patch``'s dtype, or the fastest."""
        patches = self.of(PATCH)
        if self.goal_patch == "best":
            return min(patches, key=lambda r: r.seconds)
        return next(r for r in patches if r.dtype == self.goal_patch)

    @property
    def ratio(self) -> float:
        """The goal's patch seconds over the goal's LoRA seconds (each row's own time)."""
        return self.patch_goal.seconds / self.lora_goal.seconds

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


def _stage_table(stages: dict[str, dict[str, float]]) -> list[str]:
    """One column per patch dtype, one line per stage (in pipeline order), and their sum."""
    dtypes = list(stages)
    names = list(ordered_stages({k: 0.0 for st in stages.values() for k in st}))
    lines = ["| patch stage | " + " | ".join(f"{SHORT.get(d, d)} s" for d in dtypes) + " |"]
    lines.append("|---|" + "---|" * len(dtypes))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(stages[d].get(name), ".1f") for d in dtypes) + " |")
    lines.append("| all stages | " + " | ".join(f"{sum(stages[d].values()):.1f}" for d in dtypes) + " |")
    return lines


def format_overlap(dtype: str, o: Overlap) -> str:
    """One sentence: the share of the float32 patch's neurons a ``dtype`` patch selected too."""
    return (
        f"{SHORT.get(dtype, dtype)} patch selects {100 * o.share:.1f}% of the fp32 patch's neurons "
        f"(lowest matrix {100 * o.min_share:.1f}%, {o.min_matrix}); matrices touched: "
        f"{o.matrices_both} by both, {o.matrices_reference} by fp32, {o.matrices_other} by {SHORT.get(dtype, dtype)}"
    )


def format_table(result: SpeedResult) -> str:
    """The markdown table, the goal line, the per-dtype ratio lines, the neuron overlap and the stage table."""
    rows = result.rows
    goal_lora = result.lora_goal
    scored = any(r.honesty_f1 is not None or r.task_accuracy is not None for r in rows)
    head = ["method", "seconds", "child s", "peak RSS MB", "examples", f"/ LoRA {SHORT.get(goal_lora.dtype)}"]
    if scored:
        head += ["honesty F1", "task acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, f"{r.seconds:.1f}", f"{r.child_seconds:.1f}", f"{r.peak_rss_mb:.0f}", str(r.examples)]
        cells.append(f"{r.seconds / goal_lora.seconds:.2f}")
        if scored:
            cells += [_cell(None if r.honesty_f1 is None else 100 * r.honesty_f1, ".1f")]
            cells += [_cell(None if r.task_accuracy is None else 100 * r.task_accuracy, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    verdict = "PASS" if result.passed else "FAIL"
    which = "fastest" if result.goal_patch == "best" else "chosen"
    goal = result.patch_goal
    lines += [
        "",
        f"patch / LoRA: {result.ratio:.2f} ({which} patch row, {SHORT.get(goal.dtype)}, over LoRA "
        f"{SHORT.get(goal_lora.dtype)}; goal <= {result.max_ratio:g}: {verdict}), {result.threads} thread(s)",
    ]
    for p in result.of(PATCH):
        same = next((lo for lo in result.of(LORA) if lo.dtype == p.dtype and lo is not goal_lora), None)
        if same is not None:
            lines.append(f"{SHORT.get(p.dtype)} patch / {SHORT.get(p.dtype)} LoRA: {p.seconds / same.seconds:.2f}")
    for dtype, o in result.overlap.items():
        lines.append(format_overlap(dtype, o))
    for dtype, diff in result.details.get("vs_fp32_patch", {}).items():
        lines.append(format_paired(dtype, diff))
    return "\n".join([*lines, "", *_stage_table(result.stages)])


def result_record(run: PatchSpeedRun, result: SpeedResult) -> dict[str, Any]:
    """The ``--json`` record: the run's options, every row, the goal ratio, the overlaps and the stages."""
    return {
        "run": asdict(run),
        "threads": result.threads,
        "rows": [asdict(r) for r in result.rows],
        "ratio": round(result.ratio, 4),
        "goal_rows": {"patch": result.patch_goal.method, "lora": result.lora_goal.method},
        "max_ratio": result.max_ratio,
        "passed": result.passed,
        "patch_stages": result.stages,
        "overlap": {d: asdict(o) for d, o in result.overlap.items()},
        **result.details,
    }


# --- the patches' selections


def selected_neurons(path: str | Path) -> dict[str, tuple[str, set[int]]]:
    """weight -> (unit, indices) of every weight a patch file touches (its ``N::cols`` / ``N::rows`` tensors)."""
    from safetensors import safe_open

    out: dict[str, tuple[str, set[int]]] = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            weight, _, unit = key.rpartition("::")
            if unit in ("cols", "rows"):
                out[weight] = (unit, set(f.get_tensor(key).tolist()))
    return out


def neuron_overlap(reference: dict[str, tuple[str, set[int]]], other: dict[str, tuple[str, set[int]]]) -> Overlap:
    """How many of ``reference``'s neurons ``other`` selected too, per matrix and over all (:class:`Overlap`).

    A matrix ``other`` leaves alone, or patches in the other unit, shares nothing with the reference."""
    if not reference:
        raise BenchmarkError("The reference patch touches no weight: there is no selection to compare with.")
    per: dict[str, float] = {}
    hit = total = 0
    for weight, (unit, idx) in reference.items():
        o_unit, o_idx = other.get(weight, (unit, set()))
        common = len(idx & o_idx) if o_unit == unit else 0
        per[weight] = common / len(idx)
        hit, total = hit + common, total + len(idx)
    low = min(per, key=lambda w: per[w])
    return Overlap(
        share=hit / total,
        min_share=per[low],
        min_matrix=low,
        matrices_reference=len(reference),
        matrices_other=len(other),
        matrices_both=len(set(reference) & set(other)),
        per_matrix=per,
    )


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
    compute = ComputeOptions(device="cpu", dtype=spec.get("dtype", REFERENCE_DTYPE))
    t0 = time.perf_counter()
    report = make_patch(spec["sft"], spec["base"], spec["hon"], spec["task"], spec["out"], options, compute=compute)
    return {"seconds": time.perf_counter() - t0, "examples": sum(report.calibration_examples.values())}


def _child_lora(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    from surgery.baselines.rait import RaitOptions, read_examples, run_rait
    from surgery.devices import DeviceOptions, resolve

    examples = read_examples(spec["hon"]) + read_examples(spec["task"])
    options = RaitOptions(mode="lora", examples=len(examples))
    dtype = spec.get("dtype", REFERENCE_DTYPE)
    # float32: no placement, today's loop exactly; bfloat16: the same loop under bf16 autocast on the CPU
    placement = None if dtype == REFERENCE_DTYPE else resolve(DeviceOptions(device="cpu", dtype=dtype))
    t0 = time.perf_counter()
    info = run_rait(spec["sft"], spec["out"], examples, options, base=spec["base"], placement=placement)
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


def _patch_label(options: dict[str, Any], dtype: str) -> str:
    shape = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"HCNR recipe patch, {dtype} ({shape})"


def _lora_label(options: dict[str, Any], dtype: str) -> str:
    how = "" if dtype == REFERENCE_DTYPE else " under autocast"
    return (
        f"LoRA re-tuning, {dtype}{how} (r {options['r']}, lr {options['lr']:g}, 1 epoch, batch {options['batch_size']})"
    )


def _evaluate(run: PatchSpeedRun, sft: str, base: str, models: dict[str, Path], work: Path) -> dict[str, dict]:
    """Honesty F1 / task accuracy of every row's model on the demo's held-out items.

    ``models``: row key -> a patch file (applied to M1 first) or a model folder."""
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
    folders: dict[str, Path] = {}
    for key, path in models.items():
        if path.is_file():  # a patch: evaluated as M1 + patch
            folders[key] = work / f"m1-patched-{key}"
            _remove(folders[key])
            apply_patch(sft, path, folders[key], base=base)
        else:
            folders[key] = path
    items = eval_items(cfg)
    results = {key: evaluate_model(str(folder), items, cfg) for key, folder in folders.items()}
    scored = summarize(results, cfg.benchmarks)["models"]
    out: dict[str, dict] = {
        k: {"honesty_f1": m["honesty_f1_avg"], "task_accuracy": m["task_accuracy"]} for k, m in scored.items()
    }
    reference = f"{PATCH}-{REFERENCE_DTYPE}"
    for key in results:
        if key.startswith(PATCH) and key != reference and reference in results:
            out[key]["vs_reference"] = paired_differences(results[key]["items"], results[reference]["items"])
    return out


def paired_differences(records: list[dict], reference: list[dict]) -> dict[str, Any]:
    """Honesty F1 and task accuracy of ``records`` minus ``reference``'s on the same items, each with a paired
    95% bootstrap interval, and how many answers are word for word the same."""
    from surgery.baselines.report import answer_accuracy, honesty_records, macro_f1, paired_bootstrap, task_records

    same = {r["id"]: r["response"] for r in reference}
    return {
        "honesty_f1": paired_bootstrap(honesty_records(records), honesty_records(reference), macro_f1),
        "task_accuracy": paired_bootstrap(task_records(records), task_records(reference), answer_accuracy),
        "identical_answers": sum(same.get(r["id"]) == r["response"] for r in records),
        "items": len(records),
    }


def format_paired(dtype: str, diff: dict[str, Any]) -> str:
    """One sentence: a patch's honesty F1 and task accuracy against the float32 patch's, in points."""

    def part(name: str, d: dict | None) -> str:
        if not d:
            return f"{name} –"
        lo, hi = d["ci"]
        return f"{name} {100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    return (
        f"{SHORT.get(dtype, dtype)} patch - fp32 patch (paired 95% CI, points): "
        f"{part('honesty F1', diff['honesty_f1'])}, {part('task acc', diff['task_accuracy'])}; "
        f"{diff['identical_answers']}/{diff['items']} answers identical"
    )


def measure(run: PatchSpeedRun) -> SpeedResult:
    """Build (or reuse) the inputs, time every row one after the other, compare the selections, optionally
    evaluate every row."""
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
    options = recipe.get("patch", {})
    inputs = {"sft": sft, "base": base, "hon": str(hon), "task": str(task)}

    outputs: dict[str, Path] = {}  # row key -> patch file or LoRA folder
    rows: dict[str, MethodRow] = {}
    stages: dict[str, dict[str, float]] = {}
    details: dict[str, Any] = {"patch_reports": {}, "lora": {}}
    for dtype in dict.fromkeys(run.dtype):
        key, patch = f"{PATCH}-{dtype}", work / f"m1.hcnr.{dtype}.safetensors"
        report_file = patch.with_name(patch.name + ".report.json")
        _remove(patch, patch.with_name(patch.name + ".work"), report_file)
        out, peak = run_child(PATCH, {**inputs, "out": str(patch), "options": options, "dtype": dtype}, run.threads)
        report = json.loads(report_file.read_text())
        if report.get("reused"):
            log.warning("the %s patch reused parts of an earlier run: %s", dtype, report["reused"])
        label = _patch_label(options, dtype)
        rows[key] = MethodRow(label, out["seconds"], peak.seconds, peak.peak_mb, out["examples"], dtype=dtype)
        stages[dtype] = ordered_stages(report["seconds"])
        details["patch_reports"][dtype] = {k: report.get(k) for k in _REPORT_KEYS}
        outputs[key] = patch
    overlap = _overlaps(outputs)
    for dtype in dict.fromkeys(run.lora_dtype):
        key, model = f"{LORA}-{dtype}", work / f"m1-lora-{dtype}"
        _remove(model, model.with_name(model.name + "-adapter"))
        out, peak = run_child(LORA, {**inputs, "out": str(model), "dtype": dtype}, run.threads)
        label = _lora_label(out["info"]["options"], dtype)
        rows[key] = MethodRow(
            label, out["seconds"], peak.seconds, peak.peak_mb, out["examples"], kind=LORA, dtype=dtype
        )
        details["lora"][dtype] = {k: out["info"].get(k) for k in ("steps", "train_seconds", "loss_first", "loss_last")}
        details["lora"][dtype]["options"] = out["info"].get("options")
        outputs[key] = model

    scores: dict[str, dict] = _evaluate(run, sft, base, outputs, work) if run.eval else {}
    if not run.eval and not run.keep:
        for path in outputs.values():
            _remove(path, path.with_name(path.name + ".report.json"), path.with_name(path.name + "-adapter"))
    paired = {k.removeprefix(f"{PATCH}-"): v.pop("vs_reference") for k, v in scores.items() if "vs_reference" in v}
    rows = {k: MethodRow(**{**asdict(r), **_rounded(asdict(r)), **scores.get(k, {})}) for k, r in rows.items()}
    details |= {
        "calibration": {"honesty": str(hon), "task": str(task)},
        "pair": {"base": base, "sft": sft},
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_bf16": _cpu_bf16_flags(),
    }
    if paired:
        details["vs_fp32_patch"] = paired
    return SpeedResult(run.threads, tuple(rows.values()), stages, run.max_ratio, run.goal_patch, overlap, details)


#: what the --json record keeps of each patch's report.json
_REPORT_KEYS = (
    "device",
    "dtype",
    "threads",
    "patch_bytes",
    "reused",
    "parameters_changed",
    "share_of_linear",
    "seconds_total",
    "options",
)


def _overlaps(patches: dict[str, Path]) -> dict[str, Overlap]:
    """Every other dtype's patch against the float32 one (nothing when float32 was not measured)."""
    reference = patches.get(f"{PATCH}-{REFERENCE_DTYPE}")
    if reference is None:
        return {}
    ref = selected_neurons(reference)
    return {
        key.removeprefix(f"{PATCH}-"): neuron_overlap(ref, selected_neurons(path))
        for key, path in patches.items()
        if path != reference
    }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Seconds to 0.01 s and megabytes to 0.1 MB: what a timer and VmHWM can vouch for."""
    return {
        "seconds": round(row["seconds"], 2),
        "child_seconds": round(row["child_seconds"], 2),
        "peak_rss_mb": round(row["peak_rss_mb"], 1),
    }


def _cpu_bf16_flags() -> list[str]:
    """The bf16 instruction sets this CPU announces (avx512_bf16, amx_bf16): what decides bf16's speed here."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in set(flags) if "bf16" in f)


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


@click.command(help=__doc__)
@add_options(PatchSpeedRun)
def main(**kwargs: Any) -> None:
    """Measure every row, print the table, exit 1 when the goal's patch row is slower than the goal."""
    try:
        run = options_from(PatchSpeedRun, kwargs)
    except SurgeryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
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
