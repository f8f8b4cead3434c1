"""Stage 2 input: layer Hessians H = (2/N) Σ x xᵀ over calibration tokens, only for selected layers.

Layers that read the same input tensor (q/k/v, gate/up) are detected at run time by tensor identity
and share one accumulator, so no family-specific wiring is needed.

The sums need every selected layer's input, so they take one more forward pass over the SFT model's
cached block inputs, after selection. When the Fisher scores are taken at the SFT model, the backward
stream already recomputes every block on exactly those inputs: where they are small on disk
(:data:`FUSE_LIMIT_BYTES`), :class:`FusedHessians` sums there the Hessians of the layers reading each
block's narrowest input (:func:`fused_layers`), before selection is known, and the compensation reads the
selected ones back (the same float32 sums in the same order, so the same patch) instead of running that
pass for them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..linear_layers import LinearLayer, forward_hooks
from .calibration import Batch, is_control
from .options import PatchOptions
from .skeleton import Block, ModelSkeleton
from .stream import Stream
from .workdir import WorkFolder

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
    with forward_hooks(modules, layers, acc.hook), torch.no_grad():
        for mask, forward in passes:
            acc.start_pass(mask.to(device))
            forward()
    acc.alive.clear()
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


#: ``--controls-in task``: D_hon's lines split by kind between protect's two terms (:func:`hessian_sets`)
HON_DECLINES, HON_CONTROLS = "hon:declines", "hon:controls"


def _keeps(part: str, batch: Batch) -> torch.Tensor | None:
    """Which examples of a batch a set part sums (None: all of them). D_hon's controls are its lines of a
    :data:`~.calibration.SHARED_KINDS` kind; every other line (a decline kind, or none) is a question to decline."""
    if part not in (HON_DECLINES, HON_CONTROLS):
        return None
    want = part == HON_CONTROLS
    return torch.tensor([is_control(k) == want for k in batch.example_kinds()], dtype=torch.bool)


def hessian_sets(options: PatchOptions) -> dict[str, tuple[str, ...]]:
    """The Hessians the chosen compensation needs ("objective", and "task" for protect) -> the calibration
    sets each one sums, in the order they are summed."""
    if options.compensation == "protect" and options.controls_in == "task":
        return {"objective": (HON_DECLINES,), "task": ("task", HON_CONTROLS)}
    if options.compensation == "protect":
        return {"objective": ("hon",), "task": ("task",)}
    return {"objective": {"both": ("hon", "task"), "hon": ("hon",), "task": ("task",)}[options.hessian_data]}


def block_hessians(
    streams: dict[str, Stream],
    block: Block,
    layers: list[LinearLayer],
    options: PatchOptions,
    reduce: Callable[[torch.Tensor], object] | None = None,
) -> Hessians:
    """Stage 2a for one block: the Hessians the chosen compensation needs, from the SFT's cached inputs.

    Those the backward stream summed already (:class:`FusedHessians`) are read back; the others take one
    forward pass through the block. With several processes each sums its own batches and ``reduce``
    gathers the sums on the block's owner."""
    fused = FusedHessians.read(streams["hon"].work, block, layers) if reduce is None else {}
    rest = [layer for layer in layers if not fused or layer.weight not in fused["objective"].by_layer]
    if rest:
        # the backward stream's attention kernels: sums taken here equal those it would have fused, bit for bit
        with streams["hon"].skel.block(block, backward=True) as module:
            computed = {
                name: _collect(module, [(streams[w.split(":")[0]], w) for w in which], block, rest, reduce)
                for name, which in hessian_sets(options).items()
            }
        fused = {name: _merged(fused.get(name), h) for name, h in computed.items()}
    return Hessians(fused["objective"], fused.get("task"))


def _merged(a: HessianSet | None, b: HessianSet) -> HessianSet:
    """Two Hessian sets of different layers of one block as one."""
    if a is None:
        return b
    return HessianSet({**a.by_layer, **b.by_layer}, max(a.tokens, b.tokens), a.groups + b.groups)


def _collect(
    module: nn.Module,
    streams: list[tuple[Stream, str]],
    block: Block,
    layers: list[LinearLayer],
    reduce: Callable[[torch.Tensor], object] | None,
) -> HessianSet:
    """Σ x xᵀ of ``layers`` (all in ``block``) over the cached block inputs of ``streams``, in order; each
    stream comes with the set part it sums (:func:`hessian_sets`: a whole set, or D_hon's controls or declines)."""
    passes: list[Pass] = []
    for s, part in streams:
        for batch, call, x in zip(s.batches, s.calls, s.inputs(block.index)):
            run = call.calls[block.index].run
            mask = batch.attention_mask
            keep = _keeps(part, batch)
            if keep is not None:
                mask = mask * keep[:, None].to(mask.dtype)
            passes.append((mask, functools.partial(run, module, x, s.returns_tuple)))
    skel = streams[0][0].skel
    return collect_hessians(skel.modules, layers, passes, device=skel.device, reduce=reduce)


#: Hessians summed during the backward stream are kept on disk only up to this size for the whole model
#: (float32, both sets for protect; counted per layer, an upper bound where layers share an input). Above
#: it (Llama-3.2-1B: 3.2 GB; SmolLM2-135M: 0.48 GB) the compensation's own forward pass is cheaper than
#: writing and reading them back: an 8B model's would take about 26 GB.
FUSE_LIMIT_BYTES = 2 * 2**30


def fused_layers(block: Block) -> list[LinearLayer]:
    """The layers whose Hessians the backward stream sums: those reading the block's narrowest input (the
    residual stream in a transformer: q/k/v, gate/up, and o where the heads are as wide).

    A wider input's Hessian costs more to sum than the matmul it feeds (an MLP's down projection: in² against
    in·out, 7x SmolLM2's other Hessians) and selection often leaves those layers out (SmolLM2's recipe keeps 2
    of 30), so they are summed after selection, only where selected."""
    narrowest = min(layer.in_features for layer in block.layers)
    return [layer for layer in block.layers if layer.in_features == narrowest]


def fused_hessian_bytes(blocks: Iterable[Block], options: PatchOptions) -> int:
    """Disk the fused Hessians of ``blocks`` take (upper bound: every layer counted apart)."""
    per_set = sum(layer.in_features**2 for block in blocks for layer in fused_layers(block))
    return 4 * per_set * len(hessian_sets(options))


def fuses_hessians(options: PatchOptions, blocks: Iterable[Block], world_size: int) -> bool:
    """Whether the backward stream sums the Hessians (:class:`FusedHessians`) for this run.

    It must recompute the SFT model on the compensation's own inputs (Fisher at the SFT model), the run must
    need Hessians, and it must be one process (several ranks would have to agree block by block on which
    parts each has; their Hessian pass stays separate)."""
    return (
        options.selection == "fisher"
        and options.controls_in == "hon"  # the backward stream sums whole sets only
        and options.fisher_at == "sft"
        and needs_hessians(options)
        and world_size == 1
        and fused_hessian_bytes(blocks, options) <= FUSE_LIMIT_BYTES
    )


@dataclass
class _Tap:
    """One accumulator fed by the block's recompute in the backward stream (a :class:`~.stream.PassTap`)."""

    acc: _GroupedAccumulator
    layers: list[LinearLayer]
    modules: dict[str, nn.Module]

    def start_pass(self, attention_mask: torch.Tensor) -> None:
        self.acc.start_pass(attention_mask.to(self.acc.device))

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """The accumulator's hooks (they add detached inputs: the recompute's autograd graph never sees them)."""
        try:
            with forward_hooks(self.modules, self.layers, self.acc.hook):
                yield
        finally:
            self.acc.alive.clear()


class FusedHessians:
    """The Hessian sums of each block's :func:`fused_layers`, taken while the backward stream recomputes the
    SFT block (a :class:`~.stream.BlockTaps`), one work-folder part per block: raw float32 sums, token counts.

    The sums run over the same batches in the same order as :func:`block_hessians` would run them (D_hon's
    then D_task's for ``--hessian-data both``), so the compensation gets the same float32 sums. A block
    whose sets were not all recomputed in this run (a resumed Fisher stage) gets no part: its Hessians are
    computed after selection as without fusion."""

    def __init__(self, work: WorkFolder, skel: ModelSkeleton, options: PatchOptions) -> None:
        self.work, self.skel, self.sets = work, skel, hessian_sets(options)
        self.block_index: int | None = None
        self.accs: dict[str, _GroupedAccumulator] = {}

    @staticmethod
    def part_name(block: Block) -> str:
        return f"hessians/{block.index:04d}"

    def taps(self, block: Block, set_name: str) -> Sequence[_Tap]:
        """Accumulators of the Hessians that sum ``set_name``, fresh ones when a new block starts."""
        if self.block_index != block.index:
            self.block_index = block.index
            self.accs = {name: _GroupedAccumulator(torch.float32, self.skel.device) for name in self.sets}
        layers = fused_layers(block)
        return [_Tap(self.accs[n], layers, self.skel.modules) for n, which in self.sets.items() if set_name in which]

    def finish(self, block: Block, recomputed: Sequence[str]) -> None:
        """Write the block's sums as one part when every set they need ran through it in this run."""
        if all(w in recomputed for which in self.sets.values() for w in which) and self.block_index == block.index:
            tensors, meta = {}, {}
            for name, acc in self.accs.items():
                tensors.update({f"{name}::{g}": a for g, a in enumerate(acc.accs)})
                meta[name] = {"group_of": acc.group_of, "counts": acc.counts}
            self.work.save(self.part_name(block), tensors, {"hessians": json.dumps(meta)})
        self.block_index, self.accs = None, {}

    @classmethod
    def read(cls, work: WorkFolder, block: Block, layers: list[LinearLayer]) -> dict[str, HessianSet]:
        """The Hessians of those of ``layers`` (selected, in ``block``) the block's part holds, per Hessian
        ("objective", "task"); empty when there is no part.

        Only the groups of selected layers are read and finished, numbered in the order the forward pass met
        them, as :func:`collect_hessians` would have numbered them."""
        name = cls.part_name(block)
        if not work.has(name):
            return {}
        sets: dict[str, HessianSet] = {}
        wanted = {layer.weight for layer in layers}
        for key, recorded in json.loads(work.meta(name)["hessians"]).items():
            acc = _GroupedAccumulator(torch.float32, torch.device("cpu"))
            renumber: dict[int, int] = {}
            for weight, g in recorded["group_of"].items():
                if weight in wanted:
                    if g not in renumber:
                        renumber[g] = len(acc.accs)
                        acc.accs.append(work.load_one(name, f"{key}::{g}"))
                        acc.counts.append(int(recorded["counts"][g]))
                    acc.group_of[weight] = renumber[g]
            sets[key] = acc.result()
        return sets
