"""Stages 1a-1b: which neurons are honesty-critical.

Pure functions on score vectors and weight matrices; no model in sight.
"""

from __future__ import annotations

import math

import torch


def honesty_priority(s_hon: torch.Tensor, s_task: torch.Tensor, eps: float = 1e-10, normalize: bool = False) -> torch.Tensor:
    """KL-like priority r = s_hon · (log(s_hon + ε) − log(s_task + ε)): important for honesty, not for the task."""
    s_hon, s_task = s_hon.double(), s_task.double()
    if normalize:
        s_hon = s_hon / s_hon.sum().clamp(min=eps)
        s_task = s_task / s_task.sum().clamp(min=eps)
    return s_hon * (torch.log(s_hon + eps) - torch.log(s_task + eps))


def top_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """Sorted indices of the top ``share`` of entries (at least one); ties broken by lower index."""
    k = max(1, int(round(share * scores.numel())))
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def random_share(n: int, share: float, generator: torch.Generator) -> torch.Tensor:
    k = max(1, int(round(share * n)))
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
    d = {k: math.sqrt(num) / math.sqrt(den) if den > 0 else (math.inf if num > 0 else 0.0)
         for k, (num, den) in perturbation.items()}
    k = max(1, int(round(share * len(d))))
    ranked = sorted((u for u in d if d[u] > 0), key=lambda u: (-d[u], u))
    return sorted(ranked[:k])


def unit_scores(perturbation: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {k: (math.sqrt(n) / math.sqrt(d) if d > 0 else 0.0) for k, (n, d) in perturbation.items()}
