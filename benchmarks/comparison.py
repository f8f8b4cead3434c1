"""HCNR against its baselines on the bundled SmolLM2 pair (M0 honest base, M1 SFT), on this machine.

\b
    python -m benchmarks.comparison --tier core --out .cache/bench/compare-smollm2
    python -m benchmarks.comparison --tier core --tier ablations --tier budgets --out ...

The tiers (named groups of method specs) are :data:`surgery.baselines.tiers.TIERS`, documented there;
without ``--tier`` or ``--method`` the ``core`` tier runs. Tiers share one output folder and every
method's result is reused by a later run with the same inputs, so tiers can be added one after the other.

Evaluation: SelfAware held-out items (``--limit``, balanced) and the qa_wikidata task (``--task-limit``).
The result is ``bench.md`` (the efficiency table), ``bench.json``, ``pareto.png`` and ``budget.png``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from benchmarks import script_logging
from surgery.baselines.comparison import ComparisonConfig, run_comparison
from surgery.baselines.report import markdown
from surgery.baselines.tiers import RECIPE_PATCH, TIERS, methods_for
from surgery.commands.options import add_options, options_from
from surgery.errors import SurgeryError
from surgery.options import opt
from surgery.pair.build import ensure_pair

#: the tier this script runs when neither --tier nor --method is given
DEFAULT_TIER = "core"


@dataclass(frozen=True)
class ComparisonRun:
    """What one run of this script compares, and how."""

    tier: tuple[str, ...] = opt(
        (),
        f"Method tiers to run (default: {DEFAULT_TIER}, unless --method is given).",
        choices=tuple(sorted(TIERS)),
        multiple=True,
    )
    method: tuple[str, ...] = opt((), "Extra method specs (surgery bench syntax).", multiple=True)
    out: str = opt(".cache/bench/compare-smollm2", "Output folder (shared by every tier).")
    limit: int = opt(300, "SelfAware items (half answerable).")
    task_limit: int = opt(120, "qa_wikidata items.")
    max_new_tokens: int = opt(24, "Greedy tokens per answer (and per probe).")
    threads: int = opt(2, "Torch threads.")
    probe: int = opt(200, "SelfAware train questions probed for RAIT known/unknown.")
    calib_probe: int = opt(192, "SelfAware calibration questions probed for D_hon.")
    reference: str = opt(
        RECIPE_PATCH, "The method every paired difference is taken against (default: the SmolLM2 recipe's patch)."
    )
    data_dir: str | None = opt(None, "Benchmark data folder (default: $SURGERY_DATA_DIR, else the bundled samples).")
    keep_models: bool = opt(False, "Keep every method's model folder.")
    report_only: bool = opt(False, "Summarise finished methods, run nothing new.")


@click.command(help=__doc__)
@add_options(ComparisonRun)
def main(**kwargs) -> None:
    """Run the tiers on the bundled pair and print the efficiency table."""
    run = options_from(ComparisonRun, kwargs)
    script_logging()
    torch.set_num_threads(run.threads)
    pair = ensure_pair()
    cfg = ComparisonConfig(
        base=str(pair.m0),
        sft=str(pair.m1),
        out_dir=Path(run.out),
        methods=methods_for(run.tier, run.method, default=DEFAULT_TIER),
        benchmarks=("selfaware",),
        limit=run.limit,
        task_benchmarks=("qa_wikidata",),
        task_limit=run.task_limit,
        data_dir=run.data_dir,
        threads=run.threads,
        probe=run.probe,
        calib_probe=run.calib_probe,
        reference=run.reference,
        keep_models=run.keep_models,
        max_new_tokens=run.max_new_tokens,
        extra={"pair": {"base": str(pair.m0), "sft": str(pair.m1)}, "argv": sys.argv},
    )
    try:
        summary = run_comparison(cfg, run_missing=not run.report_only)
    except SurgeryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(markdown(summary))


if __name__ == "__main__":
    main()
