"""Honesty that transfers (issue 16): the leave-one-kind-out matrix on a pair (default: the bundled SmolLM2 pair).

\b
    python -m benchmarks.transfer --threads 1 --out benchmarks/results/transfer-smollm2
    python -m benchmarks.transfer --base M0 --sft M1 --per-kind 40 --out DIR
    python -m benchmarks.transfer --threads 1 --targets base --out ...   # D_hon declines in M0's own words

For every decline kind of the bundled honesty set (unknowable, false premise, future/personal,
invented, ambiguous): calibrate without it, patch the SFT model (``--method``, default the SmolLM2
recipe's patch), evaluate on held-out items of every kind plus shared answerable controls; also the
patch calibrated with every kind, M0 and M1. The protocol is :mod:`surgery.baselines.transfer`
(also ``surgery bench --transfer``). Prints the table and writes ``transfer.json`` / ``transfer.md``.
Every patch and evaluation is reused by a rerun with the same inputs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from benchmarks import script_logging
from surgery.baselines.tiers import RECIPE_PATCH
from surgery.baselines.transfer import TARGETS, TransferConfig, markdown, run_transfer
from surgery.commands.options import add_options, options_from
from surgery.data.honesty_set import DECLINE_KINDS
from surgery.errors import SurgeryError
from surgery.options import opt


@dataclass(frozen=True)
class TransferRun:
    """What one run of this script measures, and how."""

    base: str | None = opt(None, "M0, the model before fine-tuning (default: the bundled SmolLM2 pair's).")
    sft: str | None = opt(None, "M1, the fine-tuned model (default: the bundled SmolLM2 pair's).")
    method: str = opt(RECIPE_PATCH, "The patch calibrated once per kind left out (an hcnr method spec).")
    kind: tuple[str, ...] = opt(
        (), "Kinds to leave out, one row each, repeatable (default: every kind).", choices=DECLINE_KINDS, multiple=True
    )
    out: str = opt(".cache/bench/transfer-smollm2", "Output folder (transfer.json, transfer.md, per-row results).")
    per_kind: int = opt(50, "Held-out items of each decline kind (all there are where fewer).", low=1)
    controls: int = opt(100, "Held-out answerable controls shared by every kind (half SelfAware, half NQ-open).", low=1)
    task_limit: int = opt(60, "qa_wikidata task items (task accuracy).", low=1)
    n_hon: int = opt(128, "D_hon size of every calibration (half controls, half questions to decline).", low=2)
    n_task: int = opt(128, "D_task size.", low=1)
    probe: int = opt(192, "Bundled controls the SFT model is probed on (the ones it knows come first in D_hon).")
    max_new_tokens: int = opt(24, "Greedy tokens per answer (and per probe).", low=1)
    batch_size: int = opt(16, "Generation batch size.", low=1)
    threads: int = opt(1, "Torch threads.", low=1)
    seed: int = opt(0, "", low=0)
    n_boot: int = opt(1000, "Bootstrap resamples for the CIs.", low=1)
    data_dir: str | None = opt(None, "Benchmark data folder (default: $SURGERY_DATA_DIR).")
    targets: str = opt(
        "fixed",
        "D_hon's replies to the questions to decline: the bundled set's fixed text per kind, or M0's own refusals "
        "('base'; its rows and transfer.base-targets.json are written beside the fixed ones, M0/M1 shared).",
        choices=TARGETS,
    )
    own_kind_only: bool = opt(
        False,
        "Score each left-out row only on its own kind, the controls and the task (half the evaluation; "
        "no cross matrix for those rows).",
    )
    fresh: bool = opt(False, "Recompute rows whose results already exist in --out.")


@click.command(help=__doc__)
@add_options(TransferRun)
def main(**kwargs) -> None:
    """Run the protocol and print the transfer matrix."""
    run = options_from(TransferRun, kwargs)
    script_logging()
    torch.set_num_threads(run.threads)
    try:
        if (run.base is None) != (run.sft is None):
            raise SurgeryError("Give both --base and --sft, or neither (the bundled SmolLM2 pair).")
        if run.base is None:
            from surgery.pair.build import ensure_pair

            pair = ensure_pair()
            base, sft = str(pair.m0), str(pair.m1)
        else:
            base, sft = run.base, str(run.sft)
        cfg = TransferConfig(
            base=base,
            sft=sft,
            out_dir=Path(run.out),
            method=run.method,
            kinds=run.kind or DECLINE_KINDS,
            per_kind=run.per_kind,
            n_controls=run.controls,
            task_limit=run.task_limit,
            n_hon=run.n_hon,
            n_task=run.n_task,
            probe=run.probe,
            data_dir=run.data_dir,
            seed=run.seed,
            max_new_tokens=run.max_new_tokens,
            batch_size=run.batch_size,
            threads=run.threads,
            n_boot=run.n_boot,
            targets=run.targets,
            own_kind_only=run.own_kind_only,
            extra={"argv": sys.argv},
        )
        summary = run_transfer(cfg, fresh=run.fresh)
    except SurgeryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(markdown(summary))
    name = f"transfer{cfg.suffix}"
    click.echo(f"wrote {Path(run.out) / name}.json and {name}.md")


if __name__ == "__main__":
    main()
