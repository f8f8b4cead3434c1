"""Stage 1a: empirical Fisher scores per neuron, from per-example gradients, in one batched pass.

For a linear map y = W x the per-example gradient is G = Σ_t δ_t x_tᵀ (δ = ∂L/∂y). Its squared
column sums are ``diag(Xᵀ (Δ Δᵀ) X)`` and its row sums ``diag(Δᵀ (X Xᵀ) Δ)``, where X (T x in) and
Δ (T x out) are that example's inputs and output gradients. Both cost O(T²(in+out)) instead of
O(T·in·out), and no per-example gradient matrix is ever materialised: the accumulators are one
vector per matrix. Examples are batched (their losses are summed, so gradients stay per-example).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..linear_layers import LinearLayer
from ..progress import progress
from .calibration import Batch

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
class FisherScores:
    """Accumulated squared-gradient sums per layer (weight name -> vector), and the example count."""

    columns: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    n_examples: int


def fisher_scores(model: nn.Module, layers: list[LinearLayer], batches: list[Batch], desc: str = "fisher") -> FisherScores:
    """Per-neuron empirical Fisher on a calibration set, for every layer in ``layers``."""
    device = next(model.parameters()).device
    modules = dict(model.named_modules())
    cols = {l.weight: torch.zeros(l.in_features, dtype=torch.float64) for l in layers}
    rows = {l.weight: torch.zeros(l.out_features, dtype=torch.float64) for l in layers}
    inputs: dict[str, torch.Tensor] = {}
    live_mask: list[torch.Tensor] = []
    handles = []
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)

    def make_hooks(layer: LinearLayer):
        def fwd(_mod, args, out):
            inputs[layer.weight] = args[0].detach()

            def on_grad(grad: torch.Tensor) -> None:
                x = inputs.pop(layer.weight).float()
                d = grad.detach().float()
                c = torch.zeros(layer.in_features, dtype=torch.float64, device=x.device)
                r = torch.zeros(layer.out_features, dtype=torch.float64, device=x.device)
                for b in range(x.shape[0]):
                    keep = live_mask[0][b]
                    xb, db = x[b, keep], d[b, keep]
                    c += per_example_column_scores(xb, db).double()
                    r += per_example_row_scores(xb, db).double()
                cols[layer.weight] += c.cpu()
                rows[layer.weight] += r.cpu()

            if out.requires_grad:
                out.register_hook(on_grad)

        return fwd

    emb = model.get_input_embeddings()

    def make_leaf(_mod, _args, out):
        return out.detach().requires_grad_(True)

    handles.append(emb.register_forward_hook(make_leaf))
    for layer in layers:
        handles.append(modules[layer.module].register_forward_hook(make_hooks(layer)))
    n = 0
    try:
        for batch in progress(batches, desc=desc, unit="batch"):
            ids = batch.input_ids.to(device)
            att = batch.attention_mask.to(device)
            live_mask[:] = [att.bool()]
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
                losses = per_example_losses(logits, batch.labels.to(device))
                losses.sum().backward()
            n += ids.shape[0]
            inputs.clear()
    finally:
        for h in handles:
            h.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return FisherScores(cols, rows, n)
