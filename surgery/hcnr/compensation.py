"""Stages 1c + 2: restore honesty-critical columns to base values and compensate them (OBS).

All functions are pure: ``(W0, W1, H, cols) -> W`` in canonical (out x in) orientation, computed in
float64 and returned in float64 (the caller casts to the checkpoint dtype). Task columns T (every
column not restored) always keep W1; only the restored columns hc change, so the patch stays
column-sparse. The objective is the layer output on calibration inputs, ‖(W − W0) X‖², i.e.
tr((W − W0) H (W − W0)ᵀ) with H = (2/N) X Xᵀ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DAMP_RETRIES = (1.0, 10.0, 100.0)


@dataclass
class CompensationResult:
    weight: torch.Tensor  # (out x in) float64
    method: str  # "exact" | "summed" | "none" | "fallback-none"
    damp_used: float | None  # the relative damping that succeeded
    drift_sft: float  # tr(Δ H Δᵀ): SFT's output drift from base on calibration inputs
    drift_restored: float  # the same after plain restoration
    drift_patched: float  # the same for the returned weight


def _split(in_features: int, hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(in_features, dtype=torch.bool)
    mask[hc] = True
    return hc, torch.nonzero(~mask).flatten()


def restore_columns(w0: torch.Tensor, w1: torch.Tensor, hc: torch.Tensor) -> torch.Tensor:
    """W1 with columns hc put back to W0 (bit-exact copies, in W1's dtype)."""
    w = w1.clone()
    w[:, hc] = w0[:, hc].to(w1.dtype)
    return w


def output_drift(d: torch.Tensor, h: torch.Tensor) -> float:
    """tr(D H Dᵀ) = Σ over calibration tokens of ‖D x‖² (times 2/N)."""
    return float(((d @ h) * d).sum())


def damped_cholesky(h: torch.Tensor, damp: float, scale: float) -> tuple[torch.Tensor, float] | None:
    """Lower Cholesky factor of H + λI with λ = damp · scale, retried with 10x and 100x damping."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for factor in DAMP_RETRIES:
        rel = damp * factor
        lam = rel * scale
        if lam <= 0:
            continue
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0 and torch.isfinite(chol).all():
            return chol, rel
    return None


def compensate_exact(w0: torch.Tensor, w1: torch.Tensor, h: torch.Tensor, hc: torch.Tensor, damp: float = 0.01):
    """W[:, hc] = W0[:, hc] − Δ[:, T] H[T, hc] H[hc, hc]⁻¹ — the joint least-squares optimum."""
    w0, w1, h = w0.double(), w1.double(), h.double()
    hc, t = _split(w0.shape[1], hc)
    delta = w1 - w0
    factor = damped_cholesky(h[hc][:, hc], damp, float(torch.diagonal(h).mean()))
    if factor is None:
        return None
    chol, rel = factor
    rhs = h[hc][:, t] @ delta[:, t].T  # (k x out)
    e = -torch.cholesky_solve(rhs, chol).T  # (out x k)
    w = w1.clone()
    w[:, hc] = w0[:, hc] + e
    return w, rel


def compensate_summed(w0: torch.Tensor, w1: torch.Tensor, h: torch.Tensor, hc: torch.Tensor, damp: float = 0.01):
    """The paper's form: W[:, hc] = W0[:, hc] + Σ_{k∈T} (Δ[:, k] / [H⁻¹]_kk) · H⁻¹[k, hc].

    A sum of independent single-column OBS updates; unlike the exact form it can overshoot, which
    the caller sees in ``drift_patched``.
    """
    w0, w1, h = w0.double(), w1.double(), h.double()
    hc, t = _split(w0.shape[1], hc)
    factor = damped_cholesky(h, damp, float(torch.diagonal(h).mean()))
    if factor is None:
        return None
    chol, rel = factor
    hinv = torch.cholesky_inverse(chol)
    delta = w1 - w0
    scaled = delta[:, t] / torch.diagonal(hinv)[t]
    w = w1.clone()
    w[:, hc] = w0[:, hc] + scaled @ hinv[t][:, hc]
    return w, rel


def compensate_protect(
    w0: torch.Tensor, w1: torch.Tensor, h_hon: torch.Tensor, h_task: torch.Tensor, hc: torch.Tensor,
    damp: float = 0.01, task_weight: float = 1.0,
):
    """Match the base layer on honesty inputs *and* the SFT layer on task inputs (our extension).

    Minimises ‖(W − W0) X_hon‖² + λ‖(W − W1) X_task‖² over W[:, hc] (task columns keep W1):
    W[:, hc] = (W0[:, hc] H_h[hc,hc] − Δ[:, T] H_h[T,hc] + λ W1[:, hc] H_t[hc,hc]) (H_h[hc,hc] + λ H_t[hc,hc])⁻¹.
    The exact form pulls every calibration output back towards the base, the task's included; this
    one only does so where the honesty data lives, and holds the task outputs where SFT put them.
    """
    w0, w1, hh, ht = w0.double(), w1.double(), h_hon.double(), h_task.double()
    hc, t = _split(w0.shape[1], hc)
    a = hh[hc][:, hc] + task_weight * ht[hc][:, hc]
    factor = damped_cholesky(a, damp, float(torch.diagonal(hh).mean() + task_weight * torch.diagonal(ht).mean()))
    if factor is None:
        return None
    chol, rel = factor
    delta = w1 - w0
    b = w0[:, hc] @ hh[hc][:, hc] - delta[:, t] @ hh[t][:, hc] + task_weight * (w1[:, hc] @ ht[hc][:, hc])
    w = w1.clone()
    w[:, hc] = torch.cholesky_solve(b.T, chol).T
    return w, rel


def restore_and_compensate(
    w0: torch.Tensor, w1: torch.Tensor, h: torch.Tensor | None, hc: torch.Tensor, method: str = "exact",
    damp: float = 0.01, h_task: torch.Tensor | None = None, task_weight: float = 1.0,
) -> CompensationResult:
    """Dispatch on ``method``; a Cholesky failure after all retries falls back to restore-only.

    ``h`` is the Hessian the drift is measured on (for ``protect``: the honesty Hessian, with the
    task Hessian in ``h_task``).
    """
    restored = restore_columns(w0, w1, hc)
    if h is None:
        return CompensationResult(restored, "none", None, float("nan"), float("nan"), float("nan"))
    h64 = h.double()
    d_sft = output_drift(w1.double() - w0.double(), h64)
    d_rest = output_drift(restored.double() - w0.double(), h64)
    if method == "none":
        return CompensationResult(restored, "none", None, d_sft, d_rest, d_rest)
    if method == "protect":
        out = compensate_protect(w0, w1, h64, h_task, hc, damp, task_weight)
    else:
        solver = {"exact": compensate_exact, "summed": compensate_summed}[method]
        out = solver(w0, w1, h64, hc, damp)
    if out is None:
        log.warning("Cholesky failed even with %gx damping: restore-only for this matrix", DAMP_RETRIES[-1])
        return CompensationResult(restored, "fallback-none", None, d_sft, d_rest, d_rest)
    w, rel = out
    return CompensationResult(w, method, rel, d_sft, d_rest, output_drift(w - w0.double(), h64))
