"""``surgery bench``: HCNR against its baselines on one pair, side by side, in one run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..baselines.tiers import DEFAULT_TIER, TIERS
from ..devices import DeviceOptions
from .options import (
    add_options,
    benchmark_choice,
    emit_json,
    honesty_data,
    json_output,
    json_stdout,
    opt,
    options_from,
    output,
    required,
    switch,
    task_benchmark_choice,
    task_data,
    threads_option,
)

_METHOD_HELP = (
    "KIND[:ARG], repeatable: base, sft, hcnr[:VARIANT|k=v,...], rait-lora:N, rait-lora:s=SECONDS, "
    "rait-full:N, dpo:N, dpo-full:N, interp:ALPHA.  [default: the '"
    + DEFAULT_TIER
    + "' tier: "
    + ", ".join(TIERS[DEFAULT_TIER])
    + "]"
)


@dataclass(frozen=True)
class BenchOptions:
    base: str = required("The model before fine-tuning (folder or cached hub id).")
    sft: str = required("The fine-tuned model (folder, cached hub id or PEFT adapter).")
    methods: tuple[str, ...] = opt((), _METHOD_HELP, flag="--method", short="-m", multiple=True)
    benchmarks: tuple[str, ...] = benchmark_choice("Honesty benchmark name or user JSONL, repeatable.", ("selfaware",))
    limit: int = opt(300, "Items per honesty benchmark (balanced).", low=1)
    task_benchmarks: tuple[str, ...] = task_benchmark_choice(
        "Task benchmark name or user JSONL (kind \"task\"), repeatable; 'none' for none.", ("qa_wikidata",)
    )
    task_limit: int = opt(120, "Items per task benchmark.", low=1)
    hon_data: Path | None = honesty_data(
        "D_hon JSONL for HCNR [default: built from the data folder, probing the SFT model].", aliases=("--hon-data",)
    )
    task_data: Path | None = task_data("D_task JSONL for HCNR [default: built from the data folder].")
    train_data: Path | None = opt(
        None, "RAIT/DPO prompt/response JSONL (IDK-relabelled) [default: built from the train split].", metavar="FILE"
    )
    probe: int = opt(
        400, "SelfAware train questions the SFT model is probed on to split known/unknown for RAIT.", low=1
    )
    data_dir: str | None = opt(
        None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the samples bundled in the package)."
    )
    reference: str = opt("hcnr", "Method every other one is compared with by a paired bootstrap.")
    max_new_tokens: int = opt(24, "", low=1)
    batch_size: int = opt(16, "Generation batch size.", low=1)
    seed: int = opt(0, "", low=0)
    n_boot: int = opt(1000, "Bootstrap resamples for the CIs.", low=1)
    keep_models: bool = switch("Keep every method's model folder (they are large).")
    fresh: bool = switch("Recompute methods whose results already exist in --output.")
    report_only: bool = switch("Only summarise the methods that already have results in --output.")
    transfer: bool = switch(
        "Run the leave-one-kind-out transfer protocol instead of the method table: one hcnr --method "
        "(default: the SmolLM2 recipe's patch) calibrated with each kind of the bundled honesty set left out, "
        "evaluated on held-out items of every kind (-b and --limit are not used)."
    )
    per_kind: int = opt(50, "With --transfer: held-out items of each kind to decline.", low=1)
    controls: int = opt(100, "With --transfer: held-out answerable controls shared by every kind.", low=1)
    out_dir: Path = output(
        "Folder for bench.json, bench.md, pareto.png, budget.png and per-method results.",
        metavar="DIRECTORY",
        aliases=("--out",),
    )
    json_out: str | None = json_output("Write the summary (bench.json's content) to PATH ('-' for stdout).")


@click.command("bench", short_help="Compare HCNR with RAIT, DPO, restore-only, random and interpolation.")
@add_options(BenchOptions)
@add_options(DeviceOptions)
@threads_option
@json_stdout()
def bench(**kwargs: Any) -> None:
    """Compare HCNR with RAIT, DPO, restore-only, random neurons and interpolation on one pair.

    Every method gets the same inputs and the same held-out evaluation items and runs in its own
    process (its own time and peak memory). Writes a Markdown table, JSON and two plots to --output.
    """
    import torch

    from ..baselines.comparison import ComparisonConfig, run_comparison
    from ..baselines.report import markdown
    from ..outputs import check_outputs

    o = options_from(BenchOptions, kwargs)
    place = options_from(DeviceOptions, kwargs)
    inputs = (o.base, o.sft, o.hon_data, o.task_data, o.train_data, o.data_dir)
    check_outputs(inputs, files=(("--json", o.json_out),), folders=(("-o", o.out_dir),))
    tasks = () if o.task_benchmarks == ("none",) else o.task_benchmarks
    if o.transfer:
        _transfer(o, place, tasks, torch.get_num_threads())
        return
    cfg = ComparisonConfig(
        base=o.base,
        sft=o.sft,
        out_dir=o.out_dir,
        methods=o.methods or TIERS[DEFAULT_TIER],
        benchmarks=o.benchmarks,
        limit=o.limit,
        task_benchmarks=tasks,
        task_limit=o.task_limit,
        hon_data=o.hon_data,
        task_data=o.task_data,
        train_data=o.train_data,
        probe=o.probe,
        data_dir=o.data_dir,
        seed=o.seed,
        max_new_tokens=o.max_new_tokens,
        batch_size=o.batch_size,
        threads=torch.get_num_threads(),
        n_boot=o.n_boot,
        reference=o.reference,
        keep_models=o.keep_models,
        device=place.device,
        dtype=place.dtype,
    )
    summary = run_comparison(cfg, fresh=o.fresh, run_missing=not o.report_only)
    click.echo(markdown(summary), nl=False)
    click.echo(f"\nwrote {o.out_dir / 'bench.json'}, bench.md, pareto.png, budget.png")
    if o.json_out:
        emit_json(o.json_out, summary)


def _transfer(o: BenchOptions, place: DeviceOptions, tasks: tuple[str, ...], threads: int) -> None:
    """``bench --transfer``: the leave-one-kind-out protocol (:mod:`surgery.baselines.transfer`)."""
    from ..baselines.tiers import RECIPE_PATCH
    from ..baselines.transfer import TransferConfig, markdown, run_transfer
    from ..errors import OptionError

    if o.hon_data or o.task_data or o.train_data:
        raise OptionError(
            "--transfer builds its own calibration sets: leave out --honesty-data, --task-data and --train-data."
        )
    if len(o.methods) > 1:
        raise OptionError("--transfer patches with one --method (an hcnr spec).")
    cfg = TransferConfig(
        base=o.base,
        sft=o.sft,
        out_dir=o.out_dir,
        method=o.methods[0] if o.methods else RECIPE_PATCH,
        per_kind=o.per_kind,
        n_controls=o.controls,
        task_benchmarks=tasks,
        task_limit=o.task_limit,
        data_dir=o.data_dir,
        seed=o.seed,
        max_new_tokens=o.max_new_tokens,
        batch_size=o.batch_size,
        threads=threads,
        n_boot=o.n_boot,
        device=place.device,
        dtype=place.dtype,
    )
    summary = run_transfer(cfg, fresh=o.fresh)
    click.echo(markdown(summary), nl=False)
    click.echo(f"\nwrote {o.out_dir / 'transfer.json'}, transfer.md")
    if o.json_out:
        emit_json(o.json_out, summary)
