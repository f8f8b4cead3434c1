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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..linear_layers import LinearLayer, forward_hooks

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


#: the group of D_hon examples that are no question to decline (answerable controls, lines with no kind)
SHARED = "*"


@dataclass
class FisherSums:
    """Accumulated squared-gradient sums on one calibration set, per layer (weight name -> vector); with
    ``by_kind``, also per group of examples (a decline kind, or :data:`SHARED`) -> weight -> vector."""

    columns: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    n_examples: int
    by_kind: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def add(self, part: dict[str, torch.Tensor]) -> None:
        """Take in one block's sums as :meth:`LayerFisher.tensors` wrote them."""
        for key, vec in part.items():
            weight, what, *group = key.split("::")
            if group:
                self.by_kind.setdefault(group[0], {})[f"{weight}::{what}"] = vec
            else:
                (self.columns if what == "cols" else self.rows)[weight] = vec

    def kind_scores(self, neuron: str) -> dict[str, dict[str, torch.Tensor]]:
        """Group -> weight -> the column (or row) sums of that group's examples."""
        what = "cols" if neuron == "column" else "rows"
        return {
            g: {k.rpartition("::")[0]: v for k, v in vecs.items() if k.endswith(f"::{what}")}
            for g, vecs in self.by_kind.items()
        }


@dataclass
class FisherScores:
    """Stage 1a output: per-neuron Fisher scores on D_hon and D_task for the chosen neuron kind.

    Both are empty for random selection, which needs no scores.
    """

    hon: dict[str, torch.Tensor] = field(default_factory=dict)
    task: dict[str, torch.Tensor] = field(default_factory=dict)
    hon_by_kind: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # group -> weight -> sums
    examples: dict[str, int] = field(default_factory=dict)  # "task" and each D_hon group -> its examples

    @classmethod
    def of(cls, hon: FisherSums, task: FisherSums, neuron: str, examples: dict[str, int] | None = None) -> FisherScores:
        """The column (or row) scores of both sets (and of D_hon's kinds, when they were summed apart)."""
        by_kind = hon.kind_scores(neuron)
        if neuron == "column":
            return cls(hon.columns, task.columns, by_kind, dict(examples or {}))
        return cls(hon.rows, task.rows, by_kind, dict(examples or {}))


class LayerFisher:
    """Forward hooks that keep each layer's input and gradient hooks that fold it into the Fisher sums.

    Row sums cost as much again as column sums and only row selection reads them, so they are
    computed only when ``rows`` is asked for. With ``kinds`` (group names: decline kinds and :data:`SHARED`),
    the sums are also kept per group of examples (:attr:`groups` names each example's in the current
    batch), for ``--kind-pooling``; every group has sums, zeros where it has no example here.
    """

    def __init__(
        self, layers: list[LinearLayer], modules: dict[str, nn.Module], rows: bool = True, kinds: Sequence[str] = ()
    ) -> None:
        self.layers, self.modules, self.want_rows, self.want_kinds = layers, modules, rows, bool(kinds)
        self.cols = {layer.weight: torch.zeros(layer.in_features, dtype=torch.float64) for layer in layers}
        self.rows = {layer.weight: torch.zeros(layer.out_features, dtype=torch.float64) for layer in layers}
        self.by_kind: dict[str, dict[str, torch.Tensor]] = {  # group -> "<weight>::cols|rows" -> sums
            g: {
                **{f"{w}::cols": torch.zeros_like(v) for w, v in self.cols.items()},
                **({f"{w}::rows": torch.zeros_like(v) for w, v in self.rows.items()} if rows else {}),
            }
            for g in kinds
        }
        self.inputs: dict[str, torch.Tensor] = {}
        self.live: torch.Tensor | None = None  # attention mask of the current batch
        self.groups: tuple[str, ...] = ()  # each example's group in the current batch (with ``kinds``)

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """The hooks, attached for the duration."""
        try:
            with forward_hooks(self.modules, self.layers, self.forward_hook):
                yield
        finally:
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
        per_example = batched_column_scores(x, d)
        self.cols[layer.weight] += per_example.double().sum(0).cpu()
        if self.want_kinds:
            self._by_group(f"{layer.weight}::cols", per_example)
        if self.want_rows:
            per_example = batched_column_scores(d, x)
            self.rows[layer.weight] += per_example.double().sum(0).cpu()
            if self.want_kinds:
                self._by_group(f"{layer.weight}::rows", per_example)

    def _by_group(self, key: str, per_example: torch.Tensor) -> None:
        """Add each example's scores (B x n) to its group's sums."""
        assert len(self.groups) == per_example.shape[0], "every example of the batch needs its group"
        for g in sorted(set(self.groups)):
            rows = [i for i, name in enumerate(self.groups) if name == g]
            self.by_kind[g][key] += per_example[rows].double().sum(0).cpu()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The sums as one work-folder part: ``<weight>::cols`` (and ``::rows``; per group ``::cols::<group>``)."""
        out = {f"{w}::cols": v for w, v in self.cols.items()}
        if self.want_rows:
            out.update({f"{w}::rows": v for w, v in self.rows.items()})
        for g, sums in self.by_kind.items():
            out.update({f"{key}::{g}": v for key, v in sums.items()})
        return out
