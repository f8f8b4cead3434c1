"""Stages 1a-1b: which neurons are honesty-critical.

Pure functions on score vectors and weight matrices, no model in sight, and the stage
:func:`select_neurons` that applies them to every linear layer of the base/SFT pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..architecture import require_same_shapes
from ..errors import SurgeryError
from ..linear_layers import LinearLayer, canonical
from ..model_folder import require_finite
from ..modelio import LazyCheckpoint, StateDictCheckpoint
from ..progress import progress
from .fisher import SHARED, FisherScores
from .options import PatchOptions

Checkpoint = LazyCheckpoint | StateDictCheckpoint


def honesty_priority(
    s_hon: torch.Tensor, s_task: torch.Tensor, eps: float = 1e-10, normalize: bool = False
) -> torch.Tensor:
    """KL-like priority r = s_hon · (log(s_hon + ε) − log(s_task + ε)): important for honesty, not for the task."""
    s_hon, s_task = s_hon.double(), s_task.double()
    if normalize:
        s_hon = s_hon / s_hon.sum().clamp(min=eps)
        s_task = s_task / s_task.sum().clamp(min=eps)
    return s_hon * (torch.log(s_hon + eps) - torch.log(s_task + eps))


def kind_priority(
    hon_by_kind: dict[str, torch.Tensor],
    examples: dict[str, int],
    s_task: torch.Tensor,
    how: str,
    eps: float = 1e-10,
    normalize: bool = False,
) -> torch.Tensor:
    """The priority of each neuron over D_hon's kinds: each decline kind's own priority, then their mean or
    minimum (``how``), so that a neuron ranks high only when it matters for every kind (min) or on average
    (mean) rather than for the kind with the most examples or the largest gradients.

    A kind's score is the mean per-example Fisher score over its examples plus the shared ones (the
    answerable controls and lines with no kind: :data:`~.fisher.SHARED`), against D_task's mean per-example
    score; means, not sums, so kinds of different sizes weigh the same. ``hon_by_kind`` and ``examples``
    map each group (and ``examples["task"]``) to its sums and its number of examples."""
    shared = hon_by_kind.get(SHARED)
    n_shared = examples.get(SHARED, 0)
    task_mean = s_task.double() / max(1, examples["task"])
    per_kind = []
    for kind in sorted(k for k in hon_by_kind if k != SHARED):
        s = hon_by_kind[kind].double() + (shared.double() if shared is not None else 0.0)
        per_kind.append(honesty_priority(s / max(1, examples[kind] + n_shared), task_mean, eps, normalize))
    stacked = torch.stack(per_kind)
    return stacked.mean(0) if how == "mean" else stacked.amin(0)


def top_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """Sorted indices of the top ``share`` of entries (at least one); ties broken by lower index."""
    k = max(1, round(share * scores.numel()))
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def random_share(n: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of a random ``share`` of ``n`` neurons (at least one): the ablation's selection."""
    k = max(1, round(share * n))
    return torch.sort(torch.randperm(n, generator=generator)[:k]).values


def relative_perturbation(w0: torch.Tensor, w1: torch.Tensor, idx: torch.Tensor, dim: int = 1) -> tuple[float, float]:
    """(‖Δ ⊙ M‖², ‖W0 ⊙ M‖²) over the candidate neurons (columns for dim=1, rows for dim=0)."""
    a = w0.index_select(dim, idx).double()
    b = w1.index_select(dim, idx).double()
    return float(((b - a) ** 2).sum()), float((a**2).sum())


def select_units(perturbation: dict[str, tuple[float, float]], share: float) -> list[str]:
    """Keep the top ``share`` of units (matrices or blocks) by d = ‖Δ⊙M‖_F / ‖W0⊙M‖_F.

    Units SFT did not move at all (d = 0) are never kept: restoring them would change nothing.
    """
    d = {
        k: math.sqrt(num) / math.sqrt(den) if den > 0 else (math.inf if num > 0 else 0.0)
        for k, (num, den) in perturbation.items()
    }
    k = max(1, round(share * len(d)))
    ranked = sorted((u for u in d if d[u] > 0), key=lambda u: (-d[u], u))
    return sorted(ranked[:k])


def unit_scores(perturbation: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The relative perturbation d of every unit (0 where the base weights are zero), for the manifest."""
    return {k: (math.sqrt(n) / math.sqrt(d) if d > 0 else 0.0) for k, (n, d) in perturbation.items()}


@dataclass
class WeightPair:
    """The stored base and SFT weights, read one tensor at a time by the selection and the compensation."""

    base: Checkpoint
    sft: Checkpoint

    def canonical(self, layer: LinearLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """(W0, W1) of ``layer`` in (out x in) orientation."""
        w0 = require_finite(layer.weight, self.base.get(layer.weight), "the base model")
        w1 = require_finite(layer.weight, self.sft.get(layer.weight), "the SFT model")
        return canonical(w0, layer), canonical(w1, layer)

    def model_parameters(self) -> int:
        """Every parameter of the SFT checkpoint, for the share-of-model statistic."""
        names = self.sft.keys()  # checkpoints have keys() but are not iterable
        return sum(math.prod(self.sft.shape(k)) for k in names)

    def check_same_tensors(self, layers: list[LinearLayer]) -> None:
        """Every layer exists with the same shape in both models, or the pair is not one architecture."""
        require_same_shapes([layer.weight for layer in layers], self.base, self.sft)


@dataclass
class Selection:
    """Stage 1 output: honesty-critical neurons per selected weight, plus what led there (for the report)."""

    layers: list[LinearLayer]  # the selected layers, in model order
    neurons: dict[str, torch.Tensor]  # weight name -> sorted neuron indices
    candidates: dict[str, torch.Tensor]
    unit_score: dict[str, float]
    kept_units: list[str]


def select_neurons(
    layers: list[LinearLayer], scores: FisherScores, weights: WeightPair, options: PatchOptions
) -> Selection:
    """Stage 1a (intra-layer top R_IW by priority) and 1b (cross-layer top R_CW by perturbation)."""
    dim = 1 if options.neuron == "column" else 0
    gen = torch.Generator().manual_seed(options.seed)
    candidates: dict[str, torch.Tensor] = {}
    pert: dict[str, tuple[float, float]] = {}
    for layer in progress(layers, desc="selection", unit="matrix"):
        w0, w1 = weights.canonical(layer)
        if options.selection == "random":
            idx = random_share(w1.shape[dim], options.r_iw, gen)
        else:
            r = _priority(layer.weight, scores, options)
            idx = top_share(r, options.r_iw)
        candidates[layer.weight] = idx
        unit = layer.weight if options.layer_unit == "matrix" else layer.block
        num, den = relative_perturbation(w0, w1, idx, dim)
        a, b = pert.get(unit, (0.0, 0.0))
        pert[unit] = (a + num, b + den)
    kept = select_units(pert, options.r_cw)
    kept_set = set(kept)
    chosen = [
        layer for layer in layers if (layer.weight if options.layer_unit == "matrix" else layer.block) in kept_set
    ]
    if not chosen:
        raise SurgeryError("SFT did not change any linear weight of the base model: there is nothing to patch.")
    neurons = {layer.weight: candidates[layer.weight] for layer in chosen}
    return Selection(chosen, neurons, candidates, unit_scores(pert), kept)


def _priority(weight: str, scores: FisherScores, options: PatchOptions) -> torch.Tensor:
    """One matrix's neuron priority: pooled over D_hon (the paper's) or over its kinds (``--kind-pooling``)."""
    if options.kind_pooling == "pooled":
        return honesty_priority(scores.hon[weight], scores.task[weight], options.epsilon, options.fisher_normalize)
    by_kind = {g: sums[weight] for g, sums in scores.hon_by_kind.items()}
    return kind_priority(
        by_kind, scores.examples, scores.task[weight], options.kind_pooling, options.epsilon, options.fisher_normalize
    )
