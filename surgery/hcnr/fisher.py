"""Stage 1a: empirical Fisher scores per neuron, from per-example gradients, in one batched pass.

For a linear map y = W x the per-example gradient is G = Σ_t δ_t x_tᵀ (δ = ∂L/∂y). Its squared
column sums are ``diag(Xᵀ (Δ Δᵀ) X)`` and its row sums ``diag(Δᵀ (X Xᵀ) Δ)``, where X (T x in) and
Δ (T x out) are that example's inputs and output gradients. Both cost O(T²(in+out)) instead of
O(T·in·out), and no per-example gradient matrix is ever materialised: the accumulators are one
vector per matrix. Examples are batched (their losses are summed, so gradients stay per-example).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..linear_layers import LinearLayer
from ..progress import progress
from .calibration import Batch, CalibrationSets

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def per_example_column_scores(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σ_rows (Σ_t δ[t,row] x[t,k])² for one example: x (T x in), delta (T x out) -> (in,)."""
    a = delta @ delta.T
    return ((a @ x) * x).sum(0)


def per_example_row_scores(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Σ_cols (Σ_t δ[t,row] x[t,col])² for one example -> (out,)."""
    a = x @ x.T
    return ((a @ delta) * delta).sum(0)


def per_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's response tokens -> (B,)."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none")
    tok = tok.view(target.shape) * mask
    return tok.sum(1) / mask.sum(1).clamp(min=1)


@dataclass
class FisherSums:
    """Accumulated squared-gradient sums on one calibration set, per layer (weight name -> vector)."""

    columns: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    n_examples: int


@dataclass
class FisherScores:
    """Stage 1a output: per-neuron Fisher scores on D_hon and D_task for the chosen neuron kind.

    Both are empty for random selection, which needs no scores.
    """

    hon: dict[str, torch.Tensor] = field(default_factory=dict)
    task: dict[str, torch.Tensor] = field(default_factory=dict)


def score_neurons(
    model: PreTrainedModel, layers: list[LinearLayer], sets: CalibrationSets, neuron: str
) -> FisherScores:
    """Stage 1a: Fisher scores of every neuron (``neuron`` = "column" or "row") on both calibration sets."""
    hon = fisher_sums(model, layers, sets.hon, desc="fisher (honesty)")
    task = fisher_sums(model, layers, sets.task, desc="fisher (task)")
    if neuron == "column":
        return FisherScores(hon.columns, task.columns)
    return FisherScores(hon.rows, task.rows)


class _Accumulator:
    """Forward hooks that keep each layer's input and backward hooks that fold it into the Fisher sums."""

    def __init__(self, layers: list[LinearLayer]) -> None:
        self.cols = {layer.weight: torch.zeros(layer.in_features, dtype=torch.float64) for layer in layers}
        self.rows = {layer.weight: torch.zeros(layer.out_features, dtype=torch.float64) for layer in layers}
        self.inputs: dict[str, torch.Tensor] = {}
        self.live: torch.Tensor | None = None  # attention mask of the current batch

    def forward_hook(self, layer: LinearLayer) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        """Keep the layer input and fold it in when the output gradient arrives."""

        def fwd(_mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            self.inputs[layer.weight] = args[0].detach()
            if out.requires_grad:
                out.register_hook(lambda grad: self.on_grad(layer, grad))

        return fwd

    def on_grad(self, layer: LinearLayer, grad: torch.Tensor) -> None:
        """Per-example column and row sums of this layer's weight gradient, from its input and output grad."""
        assert self.live is not None
        x = self.inputs.pop(layer.weight).float()
        d = grad.detach().float()
        c = torch.zeros(layer.in_features, dtype=torch.float64, device=x.device)
        r = torch.zeros(layer.out_features, dtype=torch.float64, device=x.device)
        for b in range(x.shape[0]):
            keep = self.live[b]
            xb, db = x[b, keep], d[b, keep]
            c += per_example_column_scores(xb, db).double()
            r += per_example_row_scores(xb, db).double()
        self.cols[layer.weight] += c.cpu()
        self.rows[layer.weight] += r.cpu()


def _make_leaf(_mod: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    """Embedding output as a grad-requiring leaf, so gradients flow with every parameter frozen."""
    return out.detach().requires_grad_(True)


def fisher_sums(
    model: PreTrainedModel, layers: list[LinearLayer], batches: list[Batch], desc: str = "fisher"
) -> FisherSums:
    """Per-neuron empirical Fisher on one calibration set, for every layer in ``layers``."""
    device = next(model.parameters()).device
    modules = dict(model.named_modules())
    acc = _Accumulator(layers)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    handles = [emb.register_forward_hook(_make_leaf)]
    handles += [modules[layer.module].register_forward_hook(acc.forward_hook(layer)) for layer in layers]
    n = 0
    try:
        for batch in progress(batches, desc=desc, unit="batch"):
            ids = batch.input_ids.to(device)
            att = batch.attention_mask.to(device)
            acc.live = att.bool()
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
                losses = per_example_losses(logits, batch.labels.to(device))
                losses.sum().backward()
            n += ids.shape[0]
            acc.inputs.clear()
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return FisherSums(acc.cols, acc.rows, n)
