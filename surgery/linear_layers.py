"""Which weights HCNR may touch: the linear maps inside the transformer blocks, found generically.

No family is hard-coded. A layer qualifies when it is an ``nn.Linear`` (or GPT-2's transposed
``Conv1D``) whose module path runs through a numbered block (``...layers.3...``, ``...h.3...``).
Embeddings, ``lm_head`` and norms are never touched.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_BLOCK = re.compile(r"^(.*?\.\d+)\.")
_NEVER = ("embed", "lm_head", "norm", "wte", "wpe", "ln_")


@dataclass(frozen=True)
class LinearLayer:
    """One weight matrix HCNR may touch, in canonical (out x in) orientation."""

    module: str  # module path, e.g. model.layers.3.mlp.down_proj
    weight: str  # checkpoint tensor name, e.g. model.layers.3.mlp.down_proj.weight
    block: str  # e.g. model.layers.3
    out_features: int
    in_features: int
    transposed: bool  # True for GPT-2 Conv1D, whose stored weight is (in x out)

    @property
    def numel(self) -> int:
        return self.out_features * self.in_features


def block_of(name: str) -> str | None:
    """The numbered block a tensor or module lives in (``model.layers.3``), None outside the blocks."""
    m = _BLOCK.match(name)
    return m.group(1) if m else None


def is_block_linear_weight(name: str) -> bool:
    """Name-only test used on checkpoints (the tensor must also be 2-D)."""
    if not name.endswith(".weight") or block_of(name) is None:
        return False
    leaf = name.lower()
    return not any(tag in leaf for tag in _NEVER)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def find_linear_layers(model: nn.Module) -> list[LinearLayer]:
    """Every eligible linear layer, in module order."""
    tied = set()
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_emb is not None:
        tied.add(id(out_emb))
    layers = []
    for name, mod in model.named_modules():
        if id(mod) in tied or not name:
            continue
        if isinstance(mod, nn.Linear):
            out_f, in_f, transposed = mod.out_features, mod.in_features, False
        elif _is_conv1d(mod):
            in_f, out_f = mod.weight.shape
            transposed = True
        else:
            continue
        weight = f"{name}.weight"
        block = block_of(weight)
        if block is None or not is_block_linear_weight(weight):
            continue
        layers.append(LinearLayer(name, weight, block, out_f, in_f, transposed))
    return layers


def canonical(weight: torch.Tensor, layer: LinearLayer) -> torch.Tensor:
    """The (out x in) view of a stored weight."""
    return weight.t() if layer.transposed else weight


ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], None]


@contextlib.contextmanager
def forward_hooks(
    modules: Mapping[str, nn.Module], layers: list[LinearLayer], make_hook: Callable[[LinearLayer], ForwardHook]
) -> Iterator[None]:
    """``make_hook(layer)`` attached as a forward hook to every layer's module for the duration."""
    handles = [modules[layer.module].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
