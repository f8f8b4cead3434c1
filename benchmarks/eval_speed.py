"""Batched vs one-at-a-time greedy generation for ``surgery eval``: items/s of both, identical outputs.

\b
    python -m benchmarks.eval_speed [--model DIR] [--n 64] [--batch-size 16] [--max-new-tokens 32]

Both runs use the same model object, the same questions (SelfAware "eval" split, balanced sample) and
the same thread count, one after the other in one process, so a shared CPU affects both alike.
Exits 1 when the outputs differ or batching is less than --min-speedup times faster.
The measurement is :func:`surgery.evaluation.speed.batching_speed`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from surgery.commands.options import add_options, options_from
from surgery.evaluation.benchmarks import load_items
from surgery.evaluation.runner import torch_generator
from surgery.evaluation.speed import BATCHED, ONE_AT_A_TIME, BatchingSpeed, batching_speed
from surgery.options import opt
from surgery.pair.gguf import ensure_converted


@dataclass(frozen=True)
class EvalSpeedRun:
    """What one run of this script times."""

    model: str | None = opt(None, "Model folder (default: SmolLM2-135M-Instruct, converted from PyPI).")
    benchmark: str = opt("selfaware", "Benchmark whose questions are the prompts.")
    n: int = opt(64, "Questions (balanced sample).")
    batch_size: int = opt(16, "Batch size of the batched run.")
    max_new_tokens: int = opt(32, "Greedy tokens per answer.")
    threads: int = opt(2, "Torch threads.")
    seed: int = opt(0, "Seed of the question sample.")
    min_speedup: float = opt(3.0, "Exit 1 when batching is less than this many times faster.")
    json: str | None = opt(None, "Also write the numbers here.")


def _result(run: EvalSpeedRun, model: str, speed: BatchingSpeed) -> dict[str, Any]:
    """The JSON record: the run's settings, then the timings rounded for reading."""
    return {
        "model": model,
        "benchmark": run.benchmark,
        "n": speed.n,
        "batch_size": run.batch_size,
        "max_new_tokens": run.max_new_tokens,
        "threads": run.threads,
        "torch": torch.__version__,
        "seconds": {r.mode: round(r.seconds, 2) for r in speed.rows},
        "items_per_second": {r.mode: round(r.items_per_second, 3) for r in speed.rows},
        "speedup": round(speed.speedup, 2),
        "identical_outputs": speed.identical_outputs,
        "differing_items": speed.differing_items,
    }


@click.command(help=__doc__)
@add_options(EvalSpeedRun)
def main(**kwargs: Any) -> None:
    """Time both modes, print the JSON record and the first differing items."""
    run = options_from(EvalSpeedRun, kwargs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = run.model if run.model is not None else str(ensure_converted())
    torch.set_num_threads(run.threads)
    prompts = [it.question for it in load_items(run.benchmark, limit=run.n, seed=run.seed)]
    gen = torch_generator(model, batch_size=run.batch_size)
    speed = batching_speed(gen, prompts, batch_size=run.batch_size, max_new_tokens=run.max_new_tokens)
    result = _result(run, model, speed)
    print(json.dumps(result, indent=1))
    one, bat = speed.row(ONE_AT_A_TIME).outputs, speed.row(BATCHED).outputs
    for i in speed.differing_items[:5]:
        print(f"--- item {i}: {prompts[i]!r}\n  one: {one[i]!r}\n  bat: {bat[i]!r}")
    if run.json:
        Path(run.json).write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(0 if speed.identical_outputs and speed.speedup >= run.min_speedup else 1)


if __name__ == "__main__":
    main()
