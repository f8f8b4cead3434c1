"""Stage 2 input: layer Hessians H = (2/N) Σ x xᵀ over calibration tokens, only for selected layers.

Layers that read the same input tensor (q/k/v, gate/up) are detected at run time by tensor identity
and share one accumulator, so no family-specific wiring is needed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..linear_layers import LinearLayer
from .options import PatchOptions
from .skeleton import Block
from .stream import Stream

log = logging.getLogger(__name__)


def accumulate_hessian(x: torch.Tensor, acc: torch.Tensor) -> int:
    """Add Σ x xᵀ of the rows of ``x`` (tokens x in) into ``acc`` in place; returns the token count."""
    x = x.reshape(-1, x.shape[-1]).to(acc.dtype)
    acc.addmm_(x.T, x)
    return x.shape[0]


def finalize_hessian(acc: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The method's normalisation (docs/method.md) H = (2/N) Σ x xᵀ, in place (a Hessian of an MLP's
    down projection is the largest tensor a block holds; a copy would double it)."""
    return acc.mul_(2.0 / max(1, n_tokens))


@dataclass
class HessianSet:
    """Per-layer Hessians; layers sharing an input point at the same tensor."""

    by_layer: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    groups: list[list[str]] = field(default_factory=list)


_InputKey = tuple[int, tuple[int, ...], tuple[int, ...]]


class _GroupedAccumulator:
    """Σ x xᵀ per input group; a layer joins the group of the first layer seen reading the same tensor."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.group_of: dict[str, int] = {}
        self.accs: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.seen_this_pass: dict[_InputKey, int] = {}
        self.alive: list[torch.Tensor] = []  # inputs held so their addresses cannot be reused within a pass
        self.live: torch.Tensor | None = None  # attention mask of the current batch

    def start_pass(self, attention_mask: torch.Tensor) -> None:
        """A new forward pass: input tensors of the last one no longer identify a group."""
        self.seen_this_pass.clear()
        self.alive.clear()
        self.live = attention_mask.bool()

    def hook(self, layer: LinearLayer) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        """The forward hook that feeds ``layer``'s input into its group."""

        def on_forward(_mod: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            self.add(layer, args[0].detach())

        return on_forward

    def add(self, layer: LinearLayer, x: torch.Tensor) -> None:
        """Fold this layer's input (non-padding tokens only) into its group, once per input tensor."""
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
        self.alive.append(x)
        if layer.weight not in self.group_of:
            if key in self.seen_this_pass:
                self.group_of[layer.weight] = self.seen_this_pass[key]
                return
            self.accs.append(torch.zeros(layer.in_features, layer.in_features, dtype=self.dtype, device=self.device))
            self.counts.append(0)
            self.group_of[layer.weight] = len(self.accs) - 1
        g = self.group_of[layer.weight]
        if self.seen_this_pass.get(key) == g:
            return  # a sibling already added this input
        self.seen_this_pass[key] = g
        assert self.live is not None
        self.counts[g] += accumulate_hessian(x[self.live], self.accs[g])

    def result(self) -> HessianSet:
        """The finished Hessians H = (2/N) Σ x xᵀ per layer (siblings share one tensor), in float64 on the CPU."""
        finals = []
        for g, count in enumerate(self.counts):  # one group at a time: its float32 sum is freed as it is finished
            h = self.accs[g].double()
            self.accs[g] = h[:0]
            finals.append(finalize_hessian(h, count).cpu())
        members: dict[int, list[str]] = {}
        for name, g in self.group_of.items():
            members.setdefault(g, []).append(name)
        return HessianSet(
            by_layer={name: finals[g] for name, g in self.group_of.items()},
            tokens=max(self.counts) if self.counts else 0,
            groups=[sorted(v) for _, v in sorted(members.items())],
        )


Pass = tuple[torch.Tensor, Callable[[], object]]  # (attention mask, a forward that feeds the hooks)


def collect_hessians(
    modules: dict[str, nn.Module],
    layers: list[LinearLayer],
    passes: Iterable[Pass],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    reduce: Callable[[torch.Tensor], object] | None = None,
) -> HessianSet:
    """Accumulate Σ x xᵀ per input group over forward ``passes`` (float32 by default: half the cost of
    float64, and the relative rounding error of a sum of PSD outer products stays far below the 1%
    damping); the finished Hessians are returned in float64 for the solver.

    N counts the tokens the attention mask keeps (prompt and response alike; padding never). ``reduce``
    sums the raw accumulators and counts over processes before they are finished (several ranks)."""
    acc = _GroupedAccumulator(dtype, torch.device(device))
    handles = [modules[layer.module].register_forward_hook(acc.hook(layer)) for layer in layers]
    try:
        with torch.no_grad():
            for mask, forward in passes:
                acc.start_pass(mask.to(device))
                forward()
        acc.alive.clear()
    finally:
        for h in handles:
            h.remove()
    if reduce is not None:
        for a in acc.accs:
            reduce(a)
        counts = torch.tensor(acc.counts, dtype=torch.int64)
        reduce(counts)
        acc.counts = [int(c) for c in counts]
    return acc.result()


@dataclass
class Hessians:
    """Stage 2 input: the Hessian the compensation objective is measured on and, for protect, the task one."""

    objective: HessianSet  # D_hon for protect, else --hessian-data's set
    task: HessianSet | None = None  # protect only

    def of(self, weight: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(H, H_task) of one weight."""
        return self.objective.by_layer[weight], None if self.task is None else self.task.by_layer[weight]


def needs_hessians(options: PatchOptions) -> bool:
    """Columns need them for every compensation but none; rows only for protect (else restoring is the patch)."""
    if options.compensation == "none":
        return False
    return options.neuron == "column" or options.compensation == "protect"


def block_hessians(
    streams: dict[str, Stream],
    block: Block,
    layers: list[LinearLayer],
    options: PatchOptions,
    reduce: Callable[[torch.Tensor], object] | None = None,
) -> Hessians:
    """Stage 2a for one block: the Hessians the chosen compensation needs, from the SFT's cached inputs.

    With several processes each sums its own batches and ``reduce`` gathers the sums on the block's owner."""
    with streams["hon"].skel.block(block) as module:
        if options.compensation == "protect":
            return Hessians(
                _collect(module, [streams["hon"]], block, layers, reduce),
                _collect(module, [streams["task"]], block, layers, reduce),
            )
        which = {"both": ("hon", "task"), "hon": ("hon",), "task": ("task",)}[options.hessian_data]
        return Hessians(_collect(module, [streams[w] for w in which], block, layers, reduce))


def _collect(
    module: nn.Module,
    streams: list[Stream],
    block: Block,
    layers: list[LinearLayer],
    reduce: Callable[[torch.Tensor], object] | None,
) -> HessianSet:
    """Σ x xᵀ of ``layers`` (all in ``block``) over the cached block inputs of ``streams``, in order."""
    passes: list[Pass] = []
    for s in streams:
        for batch, call, x in zip(s.batches, s.calls, s.inputs(block.index)):
            run = call.calls[block.index].run
            passes.append((batch.attention_mask, functools.partial(run, module, x, s.returns_tuple)))
    skel = streams[0].skel
    return collect_hessians(skel.modules, layers, passes, device=skel.device, reduce=reduce)
