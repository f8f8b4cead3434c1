"""Running a model block by block over the calibration batches, with every block's input kept on disk.

The forward stream reads one block's weights at a time and writes each block's input (for all batches)
as a part of the work folder, so the memory held is one block and one block's activations whatever
the depth. The backward stream (exact Fisher scores) starts from the loss at the last hidden state and
walks down: reload a block, recompute it from its cached input, backpropagate the cached output
gradient, fold the per-example gradients into the Fisher sums, and pass the input gradient on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..progress import progress
from .calibration import Batch
from .capture import BatchCalls, block_returns_tuple, capture_batch, head_losses
from .fisher import FisherSums, LayerFisher
from .skeleton import Block, ModelSkeleton
from .workdir import WorkFolder

log = logging.getLogger(__name__)


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

    def forward(self) -> None:
        """Write every block's input and the last block's output, resuming after the last part written."""
        n = len(self.skel.blocks)
        start = 0
        while start < n and self.work.has(self.acts_name(start + 1)):
            start += 1
        if start and self.work.from_earlier_run(self.acts_name(start)):
            self.work.note_reused(f"activations {self.which}/{self.set_name} of blocks 0-{start - 1}")
        if start == n:
            return
        hidden = self.inputs(start)
        desc = f"forward {self.which} ({self.set_name})"
        for block in progress(self.skel.blocks[start:], desc=desc, unit="block"):
            hidden = self._run(block, hidden)
            self.work.save(self.acts_name(block.index + 1), {_key(b): h for b, h in enumerate(hidden)})

    def _run(self, block: Block, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        with self.skel.block(block) as module, torch.no_grad():
            return [c.calls[block.index].run(module, h, self.returns_tuple) for c, h in zip(self.calls, hidden)]

    def fisher(self, rows: bool) -> FisherSums:
        """Exact per-neuron Fisher sums of every layer, block by block from the top (resumable per block)."""
        n = len(self.skel.blocks)
        sums = FisherSums({}, {}, sum(b.input_ids.shape[0] for b in self.batches))
        if not self.work.has(self._fisher_name(n - 1)) and not self.work.has(self._grad_name(n)):
            self._head_gradients()
        desc = f"fisher {self.which} ({self.set_name})"
        for block in progress(list(reversed(self.skel.blocks)), desc=desc, unit="block"):
            name = self._fisher_name(block.index)
            if self.work.from_earlier_run(name):
                self.work.note_reused(f"Fisher sums {self.which}/{self.set_name}")
            elif not self.work.has(name):
                self._backward_block(block, rows)
            sums.add(self.work.load(name))
        self.work.delete(self._grad_name(0))
        return sums

    def _fisher_name(self, i: int) -> str:
        return f"fisher/{self.which}/{self.set_name}/{i:04d}"

    def _grad_name(self, i: int) -> str:
        return f"grads/{self.which}/{self.set_name}/{i:04d}"

    def _head_gradients(self) -> None:
        """d(sum of per-example losses)/d(last hidden state), per batch."""
        n = len(self.skel.blocks)
        grads = {}
        for b, (batch, h) in enumerate(zip(self.batches, self.inputs(n))):
            leaf = h.detach().requires_grad_(True)
            with torch.enable_grad():
                head_losses(self.skel, batch, leaf, self.returns_tuple).sum().backward()
            assert leaf.grad is not None
            grads[_key(b)] = leaf.grad
        self.work.save(self._grad_name(n), grads)

    def _backward_block(self, block: Block, rows: bool) -> None:
        """Recompute ``block`` from its cached input, backpropagate, keep its Fisher sums and input gradient."""
        i = block.index
        grads_out = self.work.load(self._grad_name(i + 1), self.skel.device)
        grads_in: dict[str, torch.Tensor] = {}
        acc = LayerFisher(list(block.layers), self.skel.modules, rows)
        with self.skel.block(block) as module, acc.hooks():
            for b, (call, x) in enumerate(zip(self.calls, self.inputs(i))):
                acc.live = self.batches[b].attention_mask.to(self.skel.device).bool()
                leaf = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    out = call.calls[i].run(module, leaf, self.returns_tuple)
                    out.backward(grads_out[_key(b)])
                assert leaf.grad is not None
                grads_in[_key(b)] = leaf.grad
        if i > 0:
            self.work.save(self._grad_name(i), grads_in)
        self.work.save(self._fisher_name(i), acc.tensors())
        self.work.delete(self._grad_name(i + 1))
