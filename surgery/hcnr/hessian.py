"""Stage 2 input: layer Hessians H = (2/N) Σ x xᵀ over calibration tokens, only for selected layers.

Layers that read the same input tensor (q/k/v, gate/up) are detected at run time by tensor identity
and share one accumulator, so no family-specific wiring is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..linear_layers import LinearLayer
from ..progress import progress
from .calibration import Batch

log = logging.getLogger(__name__)


def accumulate_hessian(x: torch.Tensor, acc: torch.Tensor) -> int:
    """Add Σ x xᵀ of the rows of ``x`` (tokens x in) into ``acc`` in place; returns the token count."""
    x = x.reshape(-1, x.shape[-1]).to(acc.dtype)
    acc.addmm_(x.T, x)
    return x.shape[0]


def finalize_hessian(acc: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The METHOD.md normalisation H = (2/N) Σ x xᵀ."""
    return acc * (2.0 / max(1, n_tokens))


@dataclass
class HessianSet:
    """Per-layer Hessians; layers sharing an input point at the same tensor."""

    by_layer: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    groups: list[list[str]] = field(default_factory=list)


def collect_hessians(
    model: nn.Module,
    layers: list[LinearLayer],
    batches: list[Batch],
    dtype: torch.dtype = torch.float32,
    desc: str = "hessians",
) -> HessianSet:
    """Accumulate Σ x xᵀ per input group (float32 by default: half the cost of float64, and the
    relative rounding error of a sum of PSD outer products stays far below the 1% damping); the
    finished Hessians are returned in float64 for the solver."""
    device = next(model.parameters()).device
    modules = dict(model.named_modules())
    group_of: dict[str, int] = {}
    accs: list[torch.Tensor] = []
    counts: list[int] = []
    seen_this_pass: dict[tuple, int] = {}
    mask_holder: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []

    def make_hook(layer: LinearLayer):
        def hook(_mod, args, _out):
            x = args[0].detach()
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
            alive.append(x)  # hold it so its address cannot be reused by another tensor in this pass
            if layer.weight not in group_of:
                if key in seen_this_pass:
                    group_of[layer.weight] = seen_this_pass[key]
                    return
                accs.append(torch.zeros(layer.in_features, layer.in_features, dtype=dtype, device=device))
                counts.append(0)
                group_of[layer.weight] = len(accs) - 1
            g = group_of[layer.weight]
            if seen_this_pass.get(key) == g:
                return  # a sibling already added this input
            seen_this_pass[key] = g
            live = x[mask_holder[0]]
            counts[g] += accumulate_hessian(live, accs[g])

        return hook

    handles = [modules[l.module].register_forward_hook(make_hook(l)) for l in layers]
    try:
        with torch.no_grad():
            for batch in progress(batches, desc=desc, unit="batch"):
                seen_this_pass.clear()
                alive.clear()
                att = batch.attention_mask.to(device)
                mask_holder[:] = [att.bool()]
                model(input_ids=batch.input_ids.to(device), attention_mask=att, use_cache=False)
        alive.clear()
    finally:
        for h in handles:
            h.remove()
    finals = [finalize_hessian(a.double(), c).cpu() for a, c in zip(accs, counts)]
    members: dict[int, list[str]] = {}
    for name, g in group_of.items():
        members.setdefault(g, []).append(name)
    return HessianSet(
        by_layer={name: finals[g] for name, g in group_of.items()},
        tokens=max(counts) if counts else 0,
        groups=[sorted(v) for _, v in sorted(members.items())],
    )
