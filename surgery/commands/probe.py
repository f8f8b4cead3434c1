"""``surgery probe``: before paying for a patch, check the fine-tuned model still knows what it doesn't know."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..devices import DeviceOptions
from .options import ModelAccess, add_options, opt, options_from, required, switch


@dataclass(frozen=True)
class ProbeOptions:
    base: str = required("The model before fine-tuning (HF folder, cached hub id or adapter).")
    benchmark: str = opt("selfaware", "Built-in benchmark name or a JSONL file of {question, answerable} items.")
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
    json_path: str | None = opt(None, "Write the record here.", flag="--json", metavar="FILE")
    plot_path: str | None = opt(None, "Write a PNG of the three AUROC curves here.", flag="--plot", metavar="FILE")


@click.command("probe", short_help="Does the SFT model still know what it doesn't know? (linear probes)")
@click.argument("sft")
@add_options(ProbeOptions)
@add_options(ModelAccess)
@add_options(DeviceOptions)
def probe(sft: str, **kwargs: Any) -> None:
    """Does the fine-tuned model SFT still know what it doesn't know?

    Linear probes on the last-prompt-token hidden states of every layer separate unanswerable from
    answerable questions: trained and tested on BASE, on SFT, and trained on BASE then tested on SFT
    unchanged. If the base probe still works on SFT, recognition survived fine-tuning and only its
    expression was lost: the case an honesty patch is built for.
    """
    from ..outputs import check_outputs
    from ..probe.report import curves_from_record, format_table, plot_curves, write_json
    from ..probe.run import run_probe
    from ..provenance import command_line

    o = options_from(ProbeOptions, kwargs)
    access = options_from(ModelAccess, kwargs)
    place = options_from(DeviceOptions, kwargs)
    check_outputs((sft, o.base, o.benchmark), files=(("--json", o.json_path), ("--plot", o.plot_path)))
    record: dict[str, Any] = {"command": command_line()}
    record |= run_probe(
        sft,
        o.base,
        benchmark=o.benchmark,
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
    click.echo(format_table(curves))
    where = record["precision"]
    click.echo(f"time: {record['seconds']['total']:.1f} s on {where['device']}, {where['dtype']}")
    if o.json_path:
        write_json(record, o.json_path)
        click.echo(f"wrote {o.json_path}")
    if o.plot_path:
        plot_curves(curves, o.plot_path, title=f"{Path(sft).name} vs {Path(o.base).name} on {o.benchmark}")
        click.echo(f"wrote {o.plot_path}")
    click.echo(record["verdict"]["line"])
