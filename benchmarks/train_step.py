"""One LoRA training step with the plain causal-LM loss vs the response-only loss (same value).

\b
    python -m benchmarks.train_step --model ~/.cache/surgery/pair/gemma3_270m/m0 --threads 1

Uses real SFT examples of the bundled recipe (NQ-open + qa_wikidata, chat-formatted), so the share
of labelled tokens is the one training sees. Prints a table: loss, seconds per step (median of
``--repeats`` after one warm-up), and the speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
import torch

from surgery.commands.options import add_options, options_from, required
from surgery.modelio import load_model, load_tokenizer, locate
from surgery.options import opt
from surgery.pair.data import sft_set
from surgery.training.lora import as_pairs
from surgery.training.speed import loss_step_timings


@dataclass(frozen=True)
class TrainStepRun:
    """What one run of this script times."""

    model: str = required("HF model folder.", metavar="DIRECTORY")
    batch_size: int = opt(8, "Examples per training step.")
    repeats: int = opt(3, "Timed steps per loss (after one warm-up); the median is reported.")
    threads: int = opt(1, "Torch threads.")


@click.command(help=__doc__)
@add_options(TrainStepRun)
def main(**kwargs: Any) -> None:
    run = options_from(TrainStepRun, kwargs)
    torch.set_num_threads(run.threads)
    source = locate(run.model)
    model, tok = load_model(source, dtype=torch.float32), load_tokenizer(source)
    examples = as_pairs(sft_set(n_open=run.batch_size, n_task=run.batch_size))[: run.batch_size]
    t = loss_step_timings(model, tok, examples, repeats=run.repeats)
    click.echo(
        f"model {run.model}: vocabulary {t.vocabulary}, batch {run.batch_size}, {t.tokens} tokens, "
        f"{t.labelled} labelled, {run.threads} thread(s)\n"
    )
    click.echo("| loss | value | s / step (median) | speed-up |\n|---|---|---|---|")
    for row in t.rows:
        click.echo(f"| {row.name} | {row.loss:.6f} | {row.seconds:.2f} | {t.rows[0].seconds / row.seconds:.2f}x |")


if __name__ == "__main__":
    main()
