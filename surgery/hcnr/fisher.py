"""Stage 1a: empirical Fisher scores per neuron, from per-example gradients, in one batched pass.

For a linear map y = W x the per-example gradient is G = Σ_t δ_t x_tᵀ (δ = ∂L/∂y). Its squared
column sums are ``diag(Xᵀ (Δ Δᵀ) X)`` and its row sums ``diag(Δᵀ (X Xᵀ) Δ)``, where X (T x in) and
Δ (T x out) are that example's inputs and output gradients. Both cost O(T²(in+out)) instead of
O(T·in·out), and no per-example gradient matrix is ever materialised: the accumulators are one
vector per matrix. Examples are batched (their losses are summed, so gradients stay per-example).
The pass itself runs block by block (:mod:`surgery.hcnr.stream`); this module holds the maths.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..linear_layers import LinearLayer

log = logging.getLogger(__name__)


def batched_column_scores(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σ_rows (Σ_t δ[t,row] x[t,k])² of every example of a batch: x (B x T x in), delta (B x T x out)
    -> (B x in). Swapping the arguments gives the row scores Σ_cols (Σ_t δ[t,row] x[t,col])² (B x out):
    the identity is symmetric in x and δ.

    The two matmuls run in the inputs' dtype; the product with x and the sum over tokens are float32
    (bfloat16 inputs: the matmuls take the CPU's or GPU's bf16 units, the reduction does not round in bf16).
    """
    a = delta @ delta.transpose(1, 2)
    return ((a @ x).float() * x.float()).sum(1)  # .float() of a float32 tensor is that tensor: no copy


def per_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's response tokens -> (B,)."""
    return target_losses(logits[:, :-1], labels[:, 1:])


def target_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B x T x V) against ``target`` (B x T, -100 ignored) per example."""
    mask = target != -100
    tok = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none"
    )
    tok = tok.view(target.shape) * mask
    return tok.sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class FisherSums:
    """Accumulated squared-gradient sums on one calibration set, per layer (weight name -> vector)."""

    columns: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    n_examples: int

    def add(self, part: dict[str, torch.Tensor]) -> None:
        """Take in one block's sums as :meth:`LayerFisher.tensors` wrote them."""
        for key, vec in part.items():
            weight, _, kind = key.rpartition("::")
            (self.columns if kind == "cols" else self.rows)[weight] = vec


@dataclass
class FisherScores:
    """Stage 1a output: per-neuron Fisher scores on D_hon and D_task for the chosen neuron kind.

    Both are empty for random selection, which needs no scores.
    """

    hon: dict[str, torch.Tensor] = field(default_factory=dict)
    task: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, hon: FisherSums, task: FisherSums, neuron: str) -> FisherScores:
        """The column (or row) scores of both sets."""
        if neuron == "column":
            return cls(hon.columns, task.columns)
        return cls(hon.rows, task.rows)


class LayerFisher:
    """Forward hooks that keep each layer's input and gradient hooks that fold it into the Fisher sums.

    Row sums cost as much again as column sums and only row selection reads them, so they are
    computed only when ``rows`` is asked for.
    """

    def __init__(self, layers: list[LinearLayer], modules: dict[str, nn.Module], rows: bool = True) -> None:
        self.layers, self.modules, self.want_rows = layers, modules, rows
        self.cols = {layer.weight: torch.zeros(layer.in_features, dtype=torch.float64) for layer in layers}
        self.rows = {layer.weight: torch.zeros(layer.out_features, dtype=torch.float64) for layer in layers}
        self.inputs: dict[str, torch.Tensor] = {}
        self.live: torch.Tensor | None = None  # attention mask of the current batch

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """The hooks, attached for the duration."""
        handles = [self.modules[layer.module].register_forward_hook(self.forward_hook(layer)) for layer in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.inputs.clear()

    def forward_hook(self, layer: LinearLayer) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        """Keep the layer input and fold it in when the output gradient arrives."""

        def fwd(_mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            self.inputs[layer.weight] = args[0].detach()
            if out.requires_grad:
                out.register_hook(lambda grad: self.on_grad(layer, grad))

        return fwd

    def on_grad(self, layer: LinearLayer, grad: torch.Tensor) -> None:
        """Per-example column (and row) sums of this layer's weight gradient, from its input and output grad.

        All examples of the batch at once: padding rows are zeroed, so they add nothing to Δ Δᵀ or X Xᵀ."""
        assert self.live is not None
        # float32 stays float32; bfloat16 stays bfloat16 for the matmuls (masking by 0/1 is exact in either)
        dtype = torch.bfloat16 if grad.dtype == torch.bfloat16 else torch.float32
        keep = self.live.unsqueeze(-1).to(dtype)
        x = self.inputs.pop(layer.weight).to(dtype) * keep
        d = grad.detach().to(dtype) * keep
        c = batched_column_scores(x, d).double().sum(0)
        self.cols[layer.weight] += c.cpu()
        if self.want_rows:
            self.rows[layer.weight] += batched_column_scores(d, x).double().sum(0).cpu()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The sums as one work-folder part: ``<weight>::cols`` (and ``::rows``)."""
        out = {f"{w}::cols": v for w, v in self.cols.items()}
        if self.want_rows:
            out.update({f"{w}::rows": v for w, v in self.rows.items()})
        return out
