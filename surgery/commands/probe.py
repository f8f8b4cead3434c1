"""``surgery probe``: before paying for a patch, check the fine-tuned model still knows what it doesn't know."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..devices import DeviceOptions
from .options import (
    ModelAccess,
    add_options,
    benchmark_choice,
    emit_json,
    json_output,
    json_stdout,
    opt,
    options_from,
    required,
    switch,
    threads_option,
)


@dataclass(frozen=True)
class ProbeOptions:
    base: str = required("The model before fine-tuning (HF folder, cached hub id or adapter).")
    benchmarks: tuple[str, ...] = benchmark_choice(
        "Built-in benchmark name or a JSONL file of {question, answerable} items; repeated: one probe run each.",
        ("selfaware",),
    )
    limit: int = opt(400, "Items to use, balanced between answerable and unanswerable.", low=4)
    seed: int = opt(0, "Seed for sampling, split and probes.", low=0)
    data_dir: str | None = opt(
        None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the bundled samples).", metavar="DIRECTORY"
    )
    split: str = opt(
        "eval",
        "Benchmark split; 'eval' keeps items that alignment/SFT/calibration data never use.",
        choices=("eval", "train", "all"),
    )
    test_fraction: float = opt(0.3, "Share of the items held out to score the probes.", above=0, high=0.9)
    c: float = opt(1.0, "Inverse L2 strength of the logistic regression.", flag="--probe-c", above=0)
    batch_size: int = opt(16, "", low=1)
    padding_side: str = opt("right", "", choices=("right", "left"))
    max_length: int = opt(1024, "Longer prompts keep their last tokens.", low=1)
    no_shared_prefix: bool = switch(
        "Run every prompt whole instead of reusing the cache of the template prefix they share.",
        flag="--no-shared-prefix",
    )
    json_path: str | None = json_output("Write the record as JSON to PATH ('-' for stdout).")
    plot_path: str | None = opt(None, "Write a PNG of the three AUROC curves here.", flag="--plot", metavar="FILE")


@click.command("probe", short_help="Does the SFT model still know what it doesn't know? (linear probes)")
@click.argument("sft")
@add_options(ProbeOptions)
@add_options(ModelAccess)
@add_options(DeviceOptions)
@threads_option
@json_stdout("json_path")
def probe(sft: str, **kwargs: Any) -> None:
    """Does the fine-tuned model SFT still know what it doesn't know?

    Linear probes on the last-prompt-token hidden states of every layer separate unanswerable from
    answerable questions: trained and tested on BASE, on SFT, and trained on BASE then tested on SFT
    unchanged. If the base probe still works on SFT, recognition survived fine-tuning and only its
    expression was lost: the case an honesty patch is built for.
    """
    from ..errors import OptionError
    from ..outputs import check_outputs
    from ..probe.report import plot_curves
    from ..provenance import command_line

    o = options_from(ProbeOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    place = options_from(DeviceOptions, kwargs)
    check_outputs((sft, o.base, *o.benchmarks), files=(("--json", o.json_path), ("--plot", o.plot_path)))
    if o.plot_path and len(o.benchmarks) > 1:
        raise OptionError("--plot draws one benchmark's curves; give -b once, or leave --plot out.")
    runs = {name: _probe_one(sft, name, o, access, place) for name in o.benchmarks}
    if o.json_path:  # one benchmark: its record, as before; several: every record under its benchmark's name
        record: dict[str, Any] = next(iter(runs.values()))[0] if len(runs) == 1 else {"command": command_line()}
        if len(runs) > 1:
            record["benchmarks"] = {name: rec for name, (rec, _) in runs.items()}
        click.echo(f"wrote {emit_json(o.json_path, record)}")
    if o.plot_path:
        (name,) = runs
        curves = runs[name][1]
        plot_curves(curves, o.plot_path, title=f"{Path(sft).name} vs {Path(o.base).name} on {name}")
        click.echo(f"wrote {o.plot_path}")


def _probe_one(
    sft: str, benchmark: str, o: ProbeOptions, access: ModelAccess, place: DeviceOptions
) -> tuple[dict[str, Any], Any]:
    """One benchmark's probe run, its table and verdict printed; returns its record and curves."""
    from ..probe.report import curves_from_record, format_table
    from ..probe.run import run_probe
    from ..provenance import command_line

    record: dict[str, Any] = {"command": command_line()}
    record |= run_probe(
        sft,
        o.base,
        benchmark=benchmark,
        limit=o.limit,
        seed=o.seed,
        data_dir=o.data_dir,
        split=o.split,
        test_fraction=o.test_fraction,
        c=o.c,
        batch_size=o.batch_size,
        padding_side=o.padding_side,
        max_length=o.max_length,
        share_prefix=not o.no_shared_prefix,
        trust_remote_code=access.trust_remote_code,
        allow_pickle=access.allow_pickle,
        device=place.device,
        dtype=place.dtype,
    )
    curves = curves_from_record(record)
    click.echo(format_table(curves) if len(o.benchmarks) == 1 else f"{benchmark}:\n{format_table(curves)}")
    where = record["precision"]
    click.echo(f"time: {record['seconds']['total']:.1f} s on {where['device']}, {where['dtype']}")
    click.echo(record["verdict"]["line"])
    return record, curves
