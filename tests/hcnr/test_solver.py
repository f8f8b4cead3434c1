"""The maths of HCNR on matrices small enough to check by hand or by an independent solver."""

import pytest
import torch

from surgery.hcnr.compensation import (
    Problem,
    compensate_exact,
    compensate_protect,
    compensate_summed,
    output_drift,
    restore_and_compensate,
    restore_columns,
)

torch.manual_seed(0)


def _problem(out=6, inp=8, tokens=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, inp, generator=g, dtype=torch.float64)
    x[:, 1] += 0.5 * x[:, 0]  # correlated inputs, so compensation has something to do
    w0 = torch.randn(out, inp, generator=g, dtype=torch.float64)
    w1 = w0 + 0.3 * torch.randn(out, inp, generator=g, dtype=torch.float64)
    h = 2.0 / tokens * x.T @ x
    return x, w0, w1, h


def test_exact_equals_least_squares_on_layer_outputs():
    x, w0, w1, h = _problem()
    hc = torch.tensor([1, 4, 6])
    t = torch.tensor([i for i in range(8) if i not in (1, 4, 6)])
    w, _ = compensate_exact(Problem(w0, w1, hc, h, damp=1e-12))
    # independent: min_E ‖(W1[:,T]−W0[:,T]) X_T + E X_hc‖ over E = W[:,hc] − W0[:,hc]
    target = -(x[:, t] @ (w1 - w0)[:, t].T)  # tokens x out
    e = torch.linalg.lstsq(x[:, hc], target).solution.T
    assert torch.allclose(w[:, hc], w0[:, hc] + e, atol=1e-8)
    assert torch.equal(w[:, t], w1[:, t])  # task columns keep W1


def test_exact_beats_restore_only_and_sft():
    _, w0, w1, h = _problem(seed=3)
    hc = torch.tensor([0, 1, 2, 3])
    res = restore_and_compensate(w0, w1, h, hc, "exact", damp=1e-6)
    assert res.method == "exact"
    assert res.drift_patched < res.drift_restored < res.drift_sft


def test_summed_equals_sum_of_single_column_obs_updates():
    x, w0, w1, h = _problem(inp=7, seed=1)
    hc = torch.tensor([2, 5])
    damp = 1e-10
    w, _ = compensate_summed(Problem(w0, w1, hc, h, damp=damp))
    delta = w1 - w0
    total = torch.zeros(w0.shape[0], len(hc), dtype=torch.float64)
    for k in [i for i in range(7) if i not in (2, 5)]:
        # one OBS step: column k keeps its drift; every other column is free and absorbs it by least squares
        free = torch.tensor([i for i in range(7) if i != k])
        target = -(x[:, [k]] @ delta[:, [k]].T)
        upd = torch.linalg.lstsq(x[:, free], target).solution.T  # out x (inp-1)
        pos = {int(c): j for j, c in enumerate(free)}
        total += upd[:, [pos[int(c)] for c in hc]]
    assert torch.allclose(w[:, hc], w0[:, hc] + total, atol=1e-6)


def test_none_is_bit_exact_restore():
    _, w0, w1, h = _problem()
    w0, w1 = w0.float(), w1.float()
    hc = torch.tensor([0, 3])
    res = restore_and_compensate(w0, w1, h, hc, "none")
    assert torch.equal(res.weight[:, hc], w0[:, hc])
    others = [i for i in range(8) if i not in (0, 3)]
    assert torch.equal(res.weight[:, others], w1[:, others])
    assert torch.equal(restore_columns(w0, w1, hc), res.weight)


def test_singular_hessian_falls_back_to_restore_only():
    _, w0, w1, _ = _problem()
    h = torch.zeros(8, 8, dtype=torch.float64)  # dead inputs: no damping scale, Cholesky impossible
    res = restore_and_compensate(w0, w1, h, torch.tensor([1]), "exact")
    assert res.method == "fallback-none"
    assert torch.equal(res.weight, restore_columns(w0, w1, torch.tensor([1])))


def test_damping_retry_is_reported():
    x, w0, w1, _ = _problem()
    h = 2.0 / 64 * x.T @ x
    h[3, 3] = -1.0  # indefinite: 1x damping fails, a larger one succeeds
    out = compensate_exact(Problem(w0, w1, torch.tensor([3, 5]), h, damp=0.5))
    assert out is not None and out[1] > 0.5


def test_output_drift_is_the_layer_output_error():
    x, w0, w1, h = _problem()
    d = w1 - w0
    assert output_drift(d, h) == pytest.approx(float(((x @ d.T) ** 2).sum()) * 2 / x.shape[0], rel=1e-10)


def test_protect_equals_least_squares_on_both_objectives():
    xh, w0, w1, hh = _problem(seed=4)
    g = torch.Generator().manual_seed(9)
    xt = torch.randn(40, 8, generator=g, dtype=torch.float64) + 0.3
    ht = 2.0 / 40 * xt.T @ xt
    hc = torch.tensor([0, 2, 5])
    t = torch.tensor([1, 3, 4, 6, 7])
    lam = 0.7
    w, _ = compensate_protect(Problem(w0, w1, hc, hh, ht, damp=1e-12, task_weight=lam))
    # independent: stack both residuals, weighted as the Hessians weight them, and solve for W[:, hc]
    sh, st = (2.0 / 64) ** 0.5, (lam * 2.0 / 40) ** 0.5
    a = torch.cat([sh * xh[:, hc], st * xt[:, hc]])
    target = torch.cat([sh * (xh @ w0.T - xh[:, t] @ w1[:, t].T), st * (xt @ w1.T - xt[:, t] @ w1[:, t].T)])
    sol = torch.linalg.lstsq(a, target).solution.T
    assert torch.allclose(w[:, hc], sol, atol=1e-8)
    assert torch.equal(w[:, t], w1[:, t])
    # with no task weight it is the exact form
    w_exact, _ = compensate_exact(Problem(w0, w1, hc, hh, damp=1e-12))
    w_zero, _ = compensate_protect(Problem(w0, w1, hc, hh, ht, damp=1e-12, task_weight=0.0))
    assert torch.allclose(w_zero, w_exact, atol=1e-9)


def _protect_in_one_expression(p: Problem) -> torch.Tensor:
    """compensate_protect as it was before its working set was cut (issue 13): full float64 copies, the
    right-hand side in one expression, both k x k blocks alive at once; the reference for bit-identity."""
    lam = p.task_weight
    w0, w1, hh, ht = p.w0.double(), p.w1.double(), p.h.double(), p.task_hessian().double()
    mask = torch.zeros(w0.shape[1], dtype=torch.bool)
    mask[p.idx] = True
    hc, t = p.idx, torch.nonzero(~mask).flatten()
    scale = float(torch.diagonal(hh).mean() + lam * torch.diagonal(ht).mean())
    hh_cc, ht_cc = hh[hc[:, None], hc], ht[hc[:, None], hc]
    b = w0[:, hc] @ hh_cc - (w1 - w0)[:, t] @ hh[t[:, None], hc] + lam * (w1[:, hc] @ ht_cc)
    a = hh_cc + lam * ht_cc
    a.diagonal().add_(p.damp * scale)
    chol = torch.linalg.cholesky(a)
    w = w1.clone()
    w[:, hc] = torch.cholesky_solve(b.T, chol).T
    return w


@pytest.mark.parametrize("k", [1, 37, 150, 299])  # 150: k x k row chunks of one row when _CHUNK_ELEMENTS is small
@pytest.mark.parametrize("transposed", [False, True])
def test_protect_is_bit_identical_to_the_one_expression_form(k, transposed, monkeypatch):
    """The lean protect forms the same operations on the same values: its patches must not move by one bit."""
    import surgery.hcnr.compensation as compensation

    monkeypatch.setattr(compensation, "_CHUNK_ELEMENTS", 1024)  # several row chunks at these sizes
    g = torch.Generator().manual_seed(k)
    out, inp = 40, 300
    xh, xt = torch.randn(500, inp, generator=g), torch.randn(400, inp, generator=g) + 0.2
    hh, ht = (2.0 / 500 * xh.T @ xh).double(), (2.0 / 400 * xt.T @ xt).double()
    w0 = torch.randn(inp, out, generator=g).T if transposed else torch.randn(out, inp, generator=g)  # float32
    w1 = w0 + 0.05 * torch.randn(out, inp, generator=g)
    if transposed:
        w1 = w1.T.contiguous().T  # an (out x in) view of a stored (in x out) weight, as canonical() gives
    idx = torch.randperm(inp, generator=g)[:k]
    p = Problem(w0, w1, idx, hh, ht, damp=0.01, task_weight=0.7)
    solved = compensate_protect(p)
    assert solved is not None and solved[1] == 0.01
    assert torch.equal(solved[0], _protect_in_one_expression(p))
    res = restore_and_compensate(w0, w1, hh, idx, "protect", 0.01, ht, 0.7)
    assert torch.equal(res.weight, solved[0])
    assert res.drift_sft == float(((w1.double() - w0.double()) @ hh * (w1.double() - w0.double())).sum())
    assert res.drift_patched == float(((solved[0] - w0.double()) @ hh * (solved[0] - w0.double())).sum())
