"""Stages 1c + 2: restore honesty-critical neurons to base values and compensate them (OBS).

The solvers are pure: a :class:`Problem` ``(W0, W1, H, neurons)`` in canonical (out x in) orientation
-> W, computed in float64 and returned in float64 (the caller casts to the checkpoint dtype). Neurons
not restored always keep W1; only the restored columns (or rows) change, so the patch stays sparse.
The objective is the layer output on calibration inputs, ‖(W − W0) X‖², i.e. tr((W − W0) H (W − W0)ᵀ)
with H = (2/N) X Xᵀ. Solvers are registered by name in :data:`COLUMN_SOLVERS` and :data:`ROW_SOLVERS`;
:func:`compensate_layers` runs them over selected matrices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..linear_layers import LinearLayer, canonical
from ..patchfile import MatrixDrift, MatrixStats, PatchEntry, make_entry
from .hessian import Hessians
from .options import PatchOptions
from .selection import WeightPair

log = logging.getLogger(__name__)

DAMP_RETRIES = (1.0, 10.0, 100.0)
#: float64 elements of a row chunk of a k x k block formed in pieces (4 MB)
_CHUNK_ELEMENTS = 1 << 19


@dataclass
class CompensationResult:
    """One matrix after restoration and compensation, with the output drifts that judge it."""

    weight: torch.Tensor  # (out x in): float64 when solved, W1's dtype when only restored
    method: str  # "exact" | "summed" | "protect" | "none" | "fallback-none" | "rows-restore" | "rows-protect"
    damp_used: float | None  # the relative damping that succeeded
    drift_sft: float  # tr(Δ H Δᵀ): SFT's output drift from base on calibration inputs
    drift_restored: float  # the same after plain restoration
    drift_patched: float  # the same for the returned weight

    def drift(self) -> MatrixDrift | None:
        """The drifts for the manifest (non-finite ones as None); None where none were measured."""
        if self.method == "rows-restore":
            return None
        return MatrixDrift(
            _finite(self.drift_sft), _finite(self.drift_restored), _finite(self.drift_patched), self.damp_used
        )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Problem:
    """One matrix's compensation problem: weights (out x in), restored neuron indices, Hessians, damping."""

    w0: torch.Tensor
    w1: torch.Tensor
    idx: torch.Tensor  # restored columns (column solvers) or rows (row solvers)
    h: torch.Tensor  # objective Hessian (in x in): honesty data for protect
    h_task: torch.Tensor | None = None  # protect only
    damp: float = 0.01
    task_weight: float = 1.0

    def task_hessian(self) -> torch.Tensor:
        if self.h_task is None:
            raise ValueError("protect needs the task Hessian")
        return self.h_task


Solved = tuple[torch.Tensor, float | None]  # (weight, relative damping used; None when no solve was needed)
Solver = Callable[[Problem], Solved | None]  # None: Cholesky failed after every retry


def _split(in_features: int, hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(restored columns hc, every other column T)."""
    mask = torch.zeros(in_features, dtype=torch.bool)
    mask[hc] = True
    return hc, torch.nonzero(~mask).flatten()


def _block(m: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``m[rows][:, cols]`` without the ``len(rows) x n`` copy in between (the same values)."""
    return m[rows[:, None], cols]


def restore_columns(w0: torch.Tensor, w1: torch.Tensor, hc: torch.Tensor) -> torch.Tensor:
    """W1 with columns hc put back to W0 (bit-exact copies, in W1's dtype)."""
    w = w1.clone()
    w[:, hc] = w0[:, hc].to(w1.dtype)
    return w


def restore_rows(w0: torch.Tensor, w1: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """W1 with output rows put back to W0 (bit-exact copies, in W1's dtype)."""
    w = w1.clone()
    w[rows, :] = w0[rows, :].to(w1.dtype)
    return w


def output_drift(d: torch.Tensor, h: torch.Tensor) -> float:
    """tr(D H Dᵀ) = Σ over calibration tokens of ‖D x‖² (times 2/N); the product is scaled in place (one
    matrix the size of D fewer at the solve's busiest moment, the same values)."""
    return float((d @ h).mul_(d).sum())


def difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a.double() - b.double()`` with ``a``'s float64 copy as the result (the casts are exact: the same
    values). Torch still casts ``b`` to a float64 temporary for the subtraction, so this saves one full-size
    matrix where ``a`` is not float64 and none where it is."""
    return a.sub(b) if a.dtype == torch.float64 else a.to(torch.float64).sub_(b)


def _all_finite(m: torch.Tensor) -> bool:
    """``torch.isfinite(m).all()`` a few rows at a time: isfinite builds a float copy of its input (|m|)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, m.shape[-1]))
    return all(bool(torch.isfinite(m[i : i + step]).all()) for i in range(0, m.shape[0], step))


def damped_cholesky(
    h: torch.Tensor, damp: float, scale: float, in_place: bool = False
) -> tuple[torch.Tensor, float] | None:
    """Lower Cholesky factor of H + λI with λ = damp · scale, retried with 10x and 100x damping.

    ``in_place`` damps ``h`` itself (its diagonal is restored exactly before each retry): for a caller
    whose H is a scratch copy, one matrix the size of H fewer."""
    diagonal = h.diagonal().clone() if in_place else None
    for factor in DAMP_RETRIES:
        rel = damp * factor
        lam = rel * scale
        if lam <= 0:
            continue
        damped = h if in_place else h.clone()
        if diagonal is not None:
            damped.diagonal().copy_(diagonal)
        damped.diagonal().add_(lam)  # H + λI without an identity matrix the size of H
        chol, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0 and _all_finite(chol):
            return chol, rel
    return None


def compensate_exact(p: Problem) -> Solved | None:
    """W[:, hc] = W0[:, hc] − Δ[:, T] H[T, hc] H[hc, hc]⁻¹ — the joint least-squares optimum."""
    w0, w1, h = p.w0.double(), p.w1.double(), p.h.double()
    hc, t = _split(w0.shape[1], p.idx)
    delta = w1 - w0
    factor = damped_cholesky(_block(h, hc, hc), p.damp, float(torch.diagonal(h).mean()))
    if factor is None:
        return None
    chol, rel = factor
    rhs = _block(h, hc, t) @ delta[:, t].T  # (k x out)
    e = -torch.cholesky_solve(rhs, chol).T  # (out x k)
    w = w1.clone()
    w[:, hc] = w0[:, hc] + e
    return w, rel


def compensate_summed(p: Problem) -> Solved | None:
    """The paper's form: W[:, hc] = W0[:, hc] + Σ_{k∈T} (Δ[:, k] / [H⁻¹]_kk) · H⁻¹[k, hc].

    A sum of independent single-column OBS updates; unlike the exact form it can overshoot, which
    the caller sees in ``drift_patched``.
    """
    w0, w1, h = p.w0.double(), p.w1.double(), p.h.double()
    hc, t = _split(w0.shape[1], p.idx)
    factor = damped_cholesky(h, p.damp, float(torch.diagonal(h).mean()))
    if factor is None:
        return None
    chol, rel = factor
    hinv = torch.cholesky_inverse(chol)
    delta = w1 - w0
    scaled = delta[:, t] / torch.diagonal(hinv)[t]
    w = w1.clone()
    w[:, hc] = w0[:, hc] + scaled @ _block(hinv, t, hc)
    return w, rel


def compensate_protect(p: Problem) -> Solved | None:
    """Match the base layer on honesty inputs *and* the SFT layer on task inputs (our extension).

    Minimises ‖(W − W0) X_hon‖² + λ‖(W − W1) X_task‖² over W[:, hc] (task columns keep W1):
    W[:, hc] = (W0[:, hc] H_h[hc,hc] − Δ[:, T] H_h[T,hc] + λ W1[:, hc] H_t[hc,hc]) (H_h[hc,hc] + λ H_t[hc,hc])⁻¹.
    The exact form pulls every calibration output back towards the base, the task's included; this
    one only does so where the honesty data lives, and holds the task outputs where SFT put them.

    Its working set is what grows with the number k of restored columns (issue 13), so the three terms
    are formed one after another, each from float64 copies of only the columns it reads, and every
    operand is freed as soon as it is summed in: at most one k x k block and one (in − k) x k block are
    alive at a time, and no full-width float64 copy of W0, W1 or Δ is made before the result. Each
    operation is the one the formula names, on the same values in the same order, so the result is
    bit-identical to forming the formula in one expression.
    """
    lam = p.task_weight
    hh, ht = p.h.double(), p.task_hessian().double()
    hc, t = _split(p.w0.shape[1], p.idx)
    scale = float(torch.diagonal(hh).mean() + lam * torch.diagonal(ht).mean())
    b = _columns(p.w0, hc) @ _block(hh, hc, hc)  # W0[:, hc] H_h[hc,hc]  (out x k)
    b.sub_(_columns(p.w1, t).sub_(_columns(p.w0, t)) @ _block(hh, t, hc))  # − Δ[:, T] H_h[T,hc]
    b.add_((_columns(p.w1, hc) @ _block(ht, hc, hc)).mul_(lam))  # + λ W1[:, hc] H_t[hc,hc]
    factor = damped_cholesky(_protect_matrix(hh, ht, hc, lam), p.damp, scale, in_place=True)
    if factor is None:
        return None
    chol, rel = factor
    solved = torch.cholesky_solve(b.T, chol).T
    del b, chol
    w = p.w1.to(torch.float64, copy=True)
    w[:, hc] = solved
    return w, rel


def _columns(w: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``w.double()[:, cols]`` without the full-width float64 copy (the same values: the cast is exact)."""
    return w[:, cols].to(torch.float64)


def _protect_matrix(hh: torch.Tensor, ht: torch.Tensor, hc: torch.Tensor, lam: float) -> torch.Tensor:
    """H_h[hc,hc] + λ H_t[hc,hc], with λ H_t's block gathered a few rows at a time (the same sums)."""
    a = _block(hh, hc, hc)
    step = max(1, _CHUNK_ELEMENTS // max(1, hc.numel()))
    for i in range(0, hc.numel(), step):
        rows = hc[i : i + step]
        a[i : i + step].add_(_block(ht, rows, hc).mul_(lam))
    return a


def restore_only(p: Problem) -> Solved | None:
    """No compensation: the restored columns keep W0's values exactly."""
    return restore_columns(p.w0, p.w1, p.idx), None


def protect_rows(p: Problem) -> Solved | None:
    """protect for output rows: each restored row i solves its own two-sided least squares.

    w_i = argmin ‖(w − W0_i) X_hon‖² + λ‖(w − W1_i) X_task‖² = (W0_i H_h + λ W1_i H_t)(H_h + λ H_t)⁻¹,
    solved as the correction W0_i + λ Δ_i H_t (H_h + λ H_t)⁻¹ to plain restoration, so the damping
    (same policy as the column form) shrinks the correction rather than the weights. Other rows keep W1.
    """
    lam = p.task_weight
    w0, w1, hh, ht = p.w0.double(), p.w1.double(), p.h.double(), p.task_hessian().double()
    rows = p.idx
    factor = damped_cholesky(hh + lam * ht, p.damp, float(torch.diagonal(hh).mean() + lam * torch.diagonal(ht).mean()))
    if factor is None:
        return None
    chol, rel = factor
    delta = (w1 - w0)[rows]  # (k x in)
    e = torch.cholesky_solve(lam * (ht @ delta.T), chol).T  # (k x in): e (H_h + λ H_t) = λ Δ H_t
    w = w1.clone()
    w[rows] = w0[rows] + e
    return w, rel


#: Column solvers by ``--compensation`` name.
COLUMN_SOLVERS: dict[str, Solver] = {
    "exact": compensate_exact,
    "summed": compensate_summed,
    "none": restore_only,
    "protect": compensate_protect,
}

#: Row solvers. Under exact, summed and none each restored row's objective ‖(w − W0_i) X‖² decouples
#: from every other row and is minimised by W0_i, so plain restoration is the patch ("rows-restore");
#: protect's task term couples a row to W1, so it has a solver.
ROW_SOLVERS: dict[str, Solver] = {"protect": protect_rows}


def restore_and_compensate(
    w0: torch.Tensor,
    w1: torch.Tensor,
    h: torch.Tensor | None,
    idx: torch.Tensor,
    method: str = "exact",
    damp: float = 0.01,
    h_task: torch.Tensor | None = None,
    task_weight: float = 1.0,
    neuron: str = "column",
) -> CompensationResult:
    """Restore neurons ``idx`` and run the registered solver; a Cholesky failure after all retries falls
    back to restore-only.

    ``h`` is the Hessian the drift is measured on (for ``protect``: the honesty Hessian, with the
    task Hessian in ``h_task``); None means no Hessians were collected, so nothing is compensated.
    """
    nan = float("nan")
    if neuron == "row" and method not in ROW_SOLVERS:
        return CompensationResult(restore_rows(w0, w1, idx), "rows-restore", None, nan, nan, nan)
    restored = (restore_columns if neuron == "column" else restore_rows)(w0, w1, idx)
    if h is None:
        return CompensationResult(restored, "none", None, nan, nan, nan)
    h64 = h.double()
    d_sft = output_drift(difference(w1, w0), h64)
    d_rest = output_drift(difference(restored, w0), h64)
    solver = (COLUMN_SOLVERS if neuron == "column" else ROW_SOLVERS)[method]
    out = solver(Problem(w0, w1, idx, h64, h_task, damp, task_weight))
    if out is None:
        log.warning("Cholesky failed even with %gx damping: restore-only for this matrix", DAMP_RETRIES[-1])
        return CompensationResult(restored, "fallback-none", None, d_sft, d_rest, d_rest)
    w, rel = out
    name = method if neuron == "column" else f"rows-{method}"
    return CompensationResult(w, name, rel, d_sft, d_rest, output_drift(difference(w, w0), h64))


@dataclass
class CompensatedPatch:
    """Stage 2 output: the patch entries and, per matrix, how each was patched."""

    entries: list[PatchEntry] = field(default_factory=list)
    per_matrix: dict[str, MatrixStats] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)  # matrices that fell back to restore-only

    def residual_ratio(self) -> float | None:
        """Σ patched output drift / Σ SFT output drift over touched matrices (calibration inputs)."""
        drifts = [m.drift for m in self.per_matrix.values() if m.drift is not None]
        num = sum(d.drift_patched or 0.0 for d in drifts)
        den = sum(d.drift_sft or 0.0 for d in drifts)
        return num / den if den else None


def compensate_layers(
    layers: list[LinearLayer],
    neurons: dict[str, torch.Tensor],
    hessians: Hessians | None,
    weights: WeightPair,
    options: PatchOptions,
) -> CompensatedPatch:
    """Stage 2b for some selected matrices (one block's, in the streamed pipeline): restore and compensate."""
    out = CompensatedPatch()
    unit = "cols" if options.neuron == "column" else "rows"
    for layer in layers:
        idx = neurons[layer.weight]
        stored_sft = weights.sft.get(layer.weight)
        w0, w1 = canonical(weights.base.get(layer.weight), layer), canonical(stored_sft, layer)
        h, h_task = hessians.of(layer.weight) if hessians is not None else (None, None)
        res = restore_and_compensate(
            w0, w1, h, idx, options.compensation, options.damp, h_task, options.task_weight, options.neuron
        )
        if res.method == "fallback-none":
            out.fallbacks.append(layer.weight)
        out.entries.append(make_entry(layer.weight, stored_sft, res.weight, idx, unit, layer.transposed))
        count = int(idx.numel()) * (layer.out_features if options.neuron == "column" else layer.in_features)
        out.per_matrix[layer.weight] = MatrixStats(int(idx.numel()), count, res.method, res.drift())
        del res  # its float64 weight would otherwise stay alive through the next matrix's solve
    return out
