"""Batched vs one-at-a-time greedy generation: how much faster batching is, and that it changes nothing.

``surgery eval`` decodes in batches with left padding; that is only worth having if it is faster and
gives exactly the outputs of decoding each prompt alone. :func:`batching_speed` measures both on one
generator object, one run after the other, so a shared CPU slows both alike.
``python -m benchmarks.eval_speed`` prints what it measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from .runner import Prompt

#: the two modes, in the order they run (the reference first)
ONE_AT_A_TIME = "one_at_a_time"
BATCHED = "batched"


class BatchedGenerator(Protocol):
    """A generator whose batch size can be changed between calls (such as :class:`HFGenerator`)."""

    batch_size: int

    def generate(self, prompts: list[Prompt], max_new_tokens: int) -> list[str]: ...


@dataclass(frozen=True)
class ModeTiming:
    """One mode: its batch size, wall seconds for all prompts, and the completions it produced."""

    mode: str
    batch_size: int
    seconds: float
    outputs: list[str]

    @property
    def items_per_second(self) -> float:
        return len(self.outputs) / self.seconds


@dataclass(frozen=True)
class BatchingSpeed:
    """Both modes on the same prompts; ``differing_items`` are the prompts whose outputs differ."""

    n: int
    rows: list[ModeTiming]
    differing_items: list[int]

    def row(self, mode: str) -> ModeTiming:
        return next(r for r in self.rows if r.mode == mode)

    @property
    def speedup(self) -> float:
        """Batched items/s over one-at-a-time items/s."""
        return self.row(BATCHED).items_per_second / self.row(ONE_AT_A_TIME).items_per_second

    @property
    def identical_outputs(self) -> bool:
        return not self.differing_items


def _timed(generator: BatchedGenerator, prompts: list[Prompt], max_new_tokens: int) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    outputs = generator.generate(prompts, max_new_tokens)
    return time.perf_counter() - t0, outputs


def batching_speed(
    generator: BatchedGenerator, prompts: list[Prompt], *, batch_size: int, max_new_tokens: int
) -> BatchingSpeed:
    """Time ``prompts`` one at a time, then in batches of ``batch_size``, and compare the outputs.

    A short warm-up generation comes first so that first-call allocations count in neither timing.
    The generator's own batch size is restored afterwards.
    """
    if not prompts:
        raise ValueError("batching_speed needs at least one prompt")
    original = generator.batch_size
    generator.generate(prompts[:2], 4)
    rows = []
    try:
        for mode, bs in ((ONE_AT_A_TIME, 1), (BATCHED, batch_size)):
            generator.batch_size = bs
            seconds, outputs = _timed(generator, prompts, max_new_tokens)
            rows.append(ModeTiming(mode, bs, seconds, outputs))
    finally:
        generator.batch_size = original
    differ = [i for i, (a, b) in enumerate(zip(rows[0].outputs, rows[1].outputs)) if a != b]
    return BatchingSpeed(n=len(prompts), rows=rows, differing_items=differ)
