"""CLI: ``surgery calib`` (calibration sets D_hon/D_task) and ``surgery pair`` (the bundled pair)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("-o", "--out-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for d_hon.jsonl, d_task.jsonl and calibration.json.")
@click.option("--model", default=None,
              help="Probe this model (folder, hub id in the cache, or PEFT adapter) so that D_hon's answerable "
                   "half starts with questions it answers correctly. Default: no probing, PKQA answers only.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Benchmark data folder (default: $SURGERY_DATA_DIR, ../shared/data, bundled samples).")
@click.option("--n-hon", default=128, show_default=True, help="Size of D_hon (half answerable, half 'I don't know').")
@click.option("--n-task", default=128, show_default=True, help="Size of D_task.")
@click.option("--task", "task_benchmarks", default="nq_open,qa_wikidata", show_default=True,
              help="Comma-separated task benchmarks that D_task is drawn from.")
@click.option("--probe", default=192, show_default=True, help="How many answerable questions to probe --model with.")
@click.option("--seed", default=0, show_default=True)
def calib(out_dir, model, data_dir, n_hon, n_task, task_benchmarks, probe, seed) -> None:
    """Build calibration sets D_hon and D_task (JSONL), disjoint from every evaluation item."""
    from ..errors import SurgeryError
    from .data import write_calibration

    if n_hon < 2 or n_task < 1:
        raise SurgeryError("--n-hon must be at least 2 and --n-task at least 1.")
    generator = None
    if model:
        from ..evaluation.runner import make_generator

        generator = make_generator("torch", model)
    benches = tuple(b.strip() for b in task_benchmarks.split(",") if b.strip())
    summary = write_calibration(Path(out_dir), generator=generator, data_dir=data_dir, n_hon=n_hon, n_task=n_task,
                                seed=seed, probe=probe, task_benchmarks=benches, probe_model=model)
    h, t = summary["honesty"], summary["task"]
    click.echo(f"D_hon   {Path(out_dir) / h['file']}  {h['n']} examples ({h['n_idk']} 'I don't know', "
               f"{h['n_known_probed']} probed as known)  sha256 {h['sha256'][:16]}")
    click.echo(f"D_task  {Path(out_dir) / t['file']}  {t['n']} examples ({', '.join(t['benchmarks'])})  "
               f"sha256 {t['sha256'][:16]}")


@click.command()
@click.option("--recipe", default="smollm2", show_default=True,
              help="Which bundled pair (a folder under recipes/): smollm2 or gemma3_270m.")
@click.option("--rebuild", is_flag=True, help="Retrain the committed LoRA adapters from the recipe (SmolLM2 about 15 min, Gemma 3 about 14 min).")
@click.option("--only", type=click.Choice(["m0", "m1"]), default=None, help="With --rebuild: retrain one adapter.")
@click.option("--reprobe", is_flag=True, help="With --rebuild: re-probe which questions the base knows.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Benchmark data folder.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the folders (and hashes) as JSON.")
def pair(recipe, rebuild, only, reprobe, data_dir, json_out) -> None:
    """Build (or load) a bundled pair: base, M0 (honest), M1 (SFT) and M1 as an adapter."""
    from .build import ensure_pair, load_lock, recipe_dir_of, train_pair

    recipe_dir = recipe_dir_of(recipe)
    report: dict = {}
    if rebuild:
        before = load_lock(recipe_dir)
        lock = train_pair(recipe_dir, data_dir=data_dir, reprobe=reprobe, only=only)
        for stage in ("m0", "m1") if only is None else (only,):
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
    if json_out:
        Path(json_out).write_text(json.dumps({**paths, **report}, indent=2) + "\n")
