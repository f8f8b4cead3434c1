"""``surgery pair`` (the bundled base/SFT pair) and ``surgery demo`` (the whole story on it)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .. import recipes
from ..devices import DeviceOptions
from ..hcnr.options import PatchOptions
from .options import (
    add_options,
    benchmark_choice,
    emit_json,
    json_output,
    json_stdout,
    opt,
    options_from,
    split_commas,
    switch,
    threads_option,
)

#: the recipe the demo runs unless --recipe names another
DEMO_RECIPE = "smollm2"


def recipe_patch_settings() -> dict[str, dict[str, Any]]:
    """recipe name -> its ``"patch"`` options (recipes/<name>/recipe.json), the default recipe first;
    a recipe that cannot be read is left out here (the demo itself reports it when run)."""
    settings: dict[str, dict[str, Any]] = {}
    for path in sorted(recipes.ROOT.glob("*/recipe.json"), key=lambda p: (p.parent.name != DEMO_RECIPE, p)):
        try:
            patch = json.loads(path.read_text(encoding="utf-8")).get("patch", {})
        except (OSError, ValueError, AttributeError):
            continue
        settings[path.parent.name] = patch if isinstance(patch, dict) else {}
    return settings


def recipe_note(name: str, default: Any) -> str:
    """The ``demo --help`` note of patch option ``name``: the value the demo uses with each recipe."""
    settings = recipe_patch_settings()
    if not any(name in patch for patch in settings.values()):
        return f"[default: {default}]"
    used = [f"{patch.get(name, default)} with the {recipe} recipe" for recipe, patch in settings.items()]
    return f"[default: {'; '.join(used)}]"


@dataclass(frozen=True)
class PairOptions:
    recipe: str = opt("smollm2", "Which bundled pair (a folder under surgery/recipes/): smollm2 or gemma3_270m.")
    rebuild: bool = switch(
        "Retrain the committed LoRA adapters from the recipe (SmolLM2 about 15 min, Gemma 3 about 14 min)."
    )
    only: str | None = opt(None, "With --rebuild: retrain one adapter.", choices=("m0", "m1"))
    reprobe: bool = switch("With --rebuild: re-probe which questions the base knows.")
    data_dir: str | None = opt(
        None, "Benchmark data folder (default: $SURGERY_DATA_DIR); rebuilding needs the full one.", metavar="DIRECTORY"
    )
    json_out: str | None = json_output("Write the folders (and hashes) as JSON to PATH ('-' for stdout).")


@dataclass(frozen=True)
class DemoOptions:
    """The demo's own options; its defaults are :class:`~surgery.pair.demo.DemoConfig`'s (a test checks)."""

    recipe: str = opt(
        DEMO_RECIPE,
        "Which bundled pair (a folder under surgery/recipes/): smollm2 or gemma3_270m (Gemma: "
        "train it first with  surgery pair --recipe gemma3_270m --rebuild).",
    )
    json_out: str | None = json_output("Write every number (incl. recovery) as JSON to PATH ('-' for stdout).")
    limit: int = opt(120, "Evaluation items per benchmark (held-out split, half answerable where both exist).", low=1)
    task_limit: int | None = opt(None, "Task (qa_wikidata) items; default: --limit.", low=1)
    work_dir: str | None = opt(
        None,
        "Where calibration sets, the patch, the patched model and results go "
        "(default: <cache>/demo, <cache>/demo-RECIPE for another recipe).",
        metavar="DIRECTORY",
    )
    data_dir: str | None = opt(
        None,
        "Benchmark data folder (default: $SURGERY_DATA_DIR). FalseQA and PUQA/PKQA are not bundled, so the default "
        "benchmarks need it, e.g. ../shared/data beside a source checkout.",
        metavar="DIRECTORY",
    )
    benchmarks: tuple[str, ...] = benchmark_choice(
        "Honesty benchmark to evaluate on, repeatable.",
        ("selfaware", "falseqa", "puqa_pkqa"),
        aliases=("--benchmarks",),
    )
    no_export: bool = switch("Skip the ONNX export stage.", flag="--no-export")


@click.command(short_help="Build or load the bundled demo base/SFT pair.")
@add_options(PairOptions)
@threads_option
@json_stdout()
def pair(**kwargs: Any) -> None:
    """Build (or load) a bundled pair: base, M0 (honest), M1 (SFT) and M1 as an adapter."""
    from ..outputs import check_outputs
    from ..pair.build import ensure_pair, load_lock, recipe_dir_of, train_pair

    o = options_from(PairOptions, kwargs)
    check_outputs((o.data_dir,), files=(("--json", o.json_out),))
    recipe_dir = recipe_dir_of(o.recipe)
    report: dict[str, Any] = {}
    if o.rebuild:
        before = load_lock(recipe_dir)
        lock = train_pair(recipe_dir, data_dir=o.data_dir, reprobe=o.reprobe, only=o.only)
        for stage in ("m0", "m1") if o.only is None else (o.only,):
            old = before.get(stage, {}).get("adapter_sha256")
            new = lock[stage]["adapter_sha256"]
            same = "identical to the previous build" if old == new else f"differs from {old[:16] if old else 'none'}"
            click.echo(f"{stage} adapter sha256 {new[:16]} ({same})")
            report[f"{stage}_adapter_sha256"] = new
            report[f"{stage}_reproduced"] = old == new
    p = ensure_pair(recipe_dir)
    paths = {"base": str(p.base), "m0": str(p.m0), "m1": str(p.m1), "m1_adapter": str(p.m1_adapter)}
    for k, v in paths.items():
        click.echo(f"{k:10s} {v}")
    if o.json_out:
        emit_json(o.json_out, {**paths, **report})


@click.command(short_help="The whole story on the bundled pair: check, patch, apply, eval, export.")
@add_options(DemoOptions)
@add_options(PatchOptions, unset=recipe_note)
@add_options(DeviceOptions)
@threads_option
@json_stdout()
def demo(**kwargs: Any) -> None:
    """Show honesty come back: build the bundled pair, patch M1, evaluate M0 / M1 / M1+patch.

    Every ``surgery patch`` option is accepted and passed to the patch stage; one not given takes the
    recipe's setting (surgery/recipes/<recipe>/recipe.json, "patch"), else the method's default (``--preset paper``);
    --help shows the value each recipe gives it.
    """
    from ..devices import resolve
    from ..errors import OptionError
    from ..outputs import check_outputs
    from ..pair.demo import DemoConfig, format_table, run_demo
    from ..pair.gguf import cache_root

    o = options_from(DemoOptions, kwargs)
    place = options_from(DeviceOptions, kwargs)
    resolve(place)  # --device cuda without CUDA: refused before the pair is built
    overrides = {k: v for k, v in kwargs.items() if v is not None}  # what is left are the patch options
    PatchOptions(**overrides)  # a bad value (--damp nan) is refused now, not after the pair is built
    check_outputs((o.data_dir,), files=(("--json", o.json_out),), folders=(("--work-dir", o.work_dir),))
    if o.limit < 2:
        raise OptionError("--limit must be at least 2 (one answerable and one unanswerable item).")
    benches = split_commas(o.benchmarks)  # the old --benchmarks a,b spelling still works
    if not benches:
        raise OptionError("--benchmark needs at least one honesty benchmark.")
    default_work = cache_root() / ("demo" if o.recipe == "smollm2" else f"demo-{o.recipe}")
    cfg = DemoConfig(
        work_dir=Path(o.work_dir) if o.work_dir else default_work,
        recipe=o.recipe,
        limit=o.limit,
        task_limit=o.limit if o.task_limit is None else o.task_limit,
        benchmarks=benches,
        data_dir=o.data_dir,
        export=not o.no_export,
        patch_options=overrides,
        device=place.device,
        dtype=place.dtype,
    )
    summary = run_demo(cfg)
    click.echo(format_table(summary))
    if o.json_out:
        click.echo(f"wrote {emit_json(o.json_out, summary, indent=1)}")
