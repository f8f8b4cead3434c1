"""Running a model block by block over the calibration batches, with every block's input kept on disk.

The forward stream reads one block's weights at a time and writes each block's input (for all batches)
as a part of the work folder, so the memory held is one block and one block's activations whatever
the depth. The backward stream (exact Fisher scores) starts from the loss at the last hidden state and
walks down: reload a block, recompute it from its cached input, backpropagate the cached output
gradient, fold the per-example gradients into the Fisher sums, and pass the input gradient on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..progress import progress
from .calibration import Batch, decline_kind
from .capture import BatchCalls, block_returns_tuple, capture_batch, head_losses
from .fisher import SHARED, FisherSums, LayerFisher
from .skeleton import Block, ModelSkeleton
from .workdir import WorkFolder


class PassTap(Protocol):
    """Something that watches a block's recompute in the backward stream through its own forward hooks."""

    def start_pass(self, attention_mask: torch.Tensor) -> None:
        """A new batch is about to run through the block."""

    def hooks(self) -> contextlib.AbstractContextManager[object]:
        """Its hooks, attached for the duration."""


class BlockTaps(Protocol):
    """What else the backward stream's recompute of a block feeds (the Hessians, when they are fused into it)."""

    def taps(self, block: Block, set_name: str) -> Sequence[PassTap]:
        """The taps to run while ``set_name``'s batches are recomputed through ``block``."""

    def finish(self, block: Block, recomputed: Sequence[str]) -> None:
        """The block is done; ``recomputed`` names the sets that ran through it in this run."""


def _key(b: int) -> str:
    return f"b{b:05d}"


@dataclass
class Stream:
    """One model's blocks run over one calibration set, its parts named ``<model>/<set>``."""

    skel: ModelSkeleton
    work: WorkFolder
    which: str  # "sft" | "base"
    set_name: str  # "hon" | "task"
    batches: list[Batch]
    calls: list[BatchCalls]
    returns_tuple: bool

    @classmethod
    def capture(cls, skel: ModelSkeleton, work: WorkFolder, which: str, set_name: str, batches: list[Batch]) -> Stream:
        """Record every block's call for every batch (cheap: embeddings and masks, no block weights)."""
        skel.prepare()
        returns_tuple = block_returns_tuple(skel, batches[0])
        calls = [capture_batch(skel, b, returns_tuple) for b in batches]
        return cls(skel, work, which, set_name, batches, calls, returns_tuple)

    def acts_name(self, i: int) -> str:
        """Part holding the input of block ``i`` (``i`` = number of blocks: the last block's output)."""
        return f"acts/{self.which}/{self.set_name}/{i:04d}"

    def inputs(self, i: int) -> list[torch.Tensor]:
        """Block ``i``'s input for every batch (block 0's straight from the capture)."""
        if i == 0:
            return [c.hidden for c in self.calls]
        part = self.work.load(self.acts_name(i), self.skel.device)
        return [part[_key(b)] for b in range(len(self.calls))]

    def forward_start(self) -> int:
        """The first block whose output is not on disk yet (all blocks done: the number of blocks)."""
        n, start = len(self.skel.blocks), 0
        while start < n and self.work.has(self.acts_name(start + 1)):
            start += 1
        if start and self.work.from_earlier_run(self.acts_name(start)):
            self.work.note_reused(f"activations {self.which}/{self.set_name} of blocks 0-{start - 1}")
        return start

    def run_block(self, module: nn.Module, block: Block, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """``block`` (loaded as ``module``) on every batch; its outputs are written as the next block's input."""
        with torch.no_grad():
            out = [c.calls[block.index].run(module, h, self.returns_tuple) for c, h in zip(self.calls, hidden)]
        self.work.save(self.acts_name(block.index + 1), {_key(b): h for b, h in enumerate(out)})
        return out

    def fisher_name(self, i: int) -> str:
        return f"fisher/{self.which}/{self.set_name}/{i:04d}"

    def grad_name(self, i: int) -> str:
        return f"grads/{self.which}/{self.set_name}/{i:04d}"

    def head_gradients(self) -> None:
        """d(sum of per-example losses)/d(last hidden state), per batch (unless on disk already)."""
        n = len(self.skel.blocks)
        if self.work.has(self.fisher_name(n - 1)) or self.work.has(self.grad_name(n)):
            return
        grads = {}
        for b, (batch, h) in enumerate(zip(self.batches, self.inputs(n))):
            leaf = h.detach().requires_grad_(True)
            with torch.enable_grad():
                head_losses(self.skel, batch, leaf, self.returns_tuple).sum().backward()
            assert leaf.grad is not None
            grads[_key(b)] = leaf.grad
        self.work.save(self.grad_name(n), grads)

    def backward_block(
        self, module: nn.Module, block: Block, rows: bool, taps: Sequence[PassTap] = (), kinds: Sequence[str] = ()
    ) -> None:
        """Recompute ``block`` from its cached input, backpropagate, keep its Fisher sums and input gradient
        (with ``kinds``, also per group of examples: the decline kinds named and :data:`~.fisher.SHARED`).

        ``taps`` see the same recompute (each batch's forward through the block) through their own hooks."""
        i = block.index
        grads_out = self.work.load(self.grad_name(i + 1), self.skel.device)
        grads_in: dict[str, torch.Tensor] = {}
        acc = LayerFisher(list(block.layers), self.skel.modules, rows, kinds)
        with contextlib.ExitStack() as hooked:
            hooked.enter_context(acc.hooks())
            for tap in taps:
                hooked.enter_context(tap.hooks())
            for b, (call, x) in enumerate(zip(self.calls, self.inputs(i))):
                acc.live = self.batches[b].attention_mask.to(self.skel.device).bool()
                acc.groups = _groups(self.batches[b]) if kinds else ()
                for tap in taps:
                    tap.start_pass(self.batches[b].attention_mask)
                leaf = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    out = call.calls[i].run(module, leaf, self.returns_tuple)
                    out.backward(grads_out[_key(b)])
                assert leaf.grad is not None
                grads_in[_key(b)] = leaf.grad
        if i > 0:
            self.work.save(self.grad_name(i), grads_in)
        self.work.save(self.fisher_name(i), acc.tensors())
        self.work.delete(self.grad_name(i + 1))


def _groups(batch: Batch) -> tuple[str, ...]:
    """Each example's Fisher group: its kind when it is a question to decline, else :data:`~.fisher.SHARED`."""
    return tuple(decline_kind(k) or SHARED for k in batch.example_kinds())


def forward_streams(streams: list[Stream]) -> None:
    """Every stream's block inputs, each block read once for all streams, resuming after the parts on disk."""
    skel, n = streams[0].skel, len(streams[0].skel.blocks)
    starts = [s.forward_start() for s in streams]
    hidden: list[list[torch.Tensor] | None] = [None] * len(streams)
    names = "+".join(s.set_name for s in streams)
    for block in progress(skel.blocks[min(starts) : n], desc=f"forward {streams[0].which} ({names})", unit="block"):
        due = [k for k, start in enumerate(starts) if start <= block.index]
        with skel.block(block) as module:
            for k in due:
                prev = hidden[k]
                inputs = prev if prev is not None else streams[k].inputs(block.index)
                hidden[k] = streams[k].run_block(module, block, inputs)


def fisher_streams(
    streams: list[Stream],
    rows: bool,
    taps: BlockTaps | None = None,
    kinds: dict[str, Sequence[str]] | None = None,
) -> list[FisherSums]:
    """Exact per-neuron Fisher sums of every layer for every stream, from the top block down, each block read
    once for all streams (resumable per block and stream); ``taps`` are fed each block's recompute; a set
    named in ``kinds`` also keeps its sums per group of examples (its decline kinds and the shared group)."""
    skel = streams[0].skel
    sums = [FisherSums({}, {}, sum(b.input_ids.shape[0] for b in s.batches)) for s in streams]
    for s in streams:
        s.head_gradients()
    names = "+".join(s.set_name for s in streams)
    for block in progress(list(reversed(skel.blocks)), desc=f"fisher {streams[0].which} ({names})", unit="block"):
        missing = [s for s in streams if not s.work.has(s.fisher_name(block.index))]
        for s in streams:
            if s.work.from_earlier_run(s.fisher_name(block.index)):
                s.work.note_reused(f"Fisher sums {s.which}/{s.set_name}")
        if missing:
            with skel.block(block, backward=True) as module:
                for s in missing:
                    s_taps = taps.taps(block, s.set_name) if taps else ()
                    s.backward_block(module, block, rows, s_taps, kinds=(kinds or {}).get(s.set_name, ()))
            if taps:
                taps.finish(block, [s.set_name for s in missing])
        for s, acc in zip(streams, sums):
            acc.add(s.work.load(s.fisher_name(block.index)))
    for s in streams:
        s.work.delete(s.grad_name(0))
    return sums
