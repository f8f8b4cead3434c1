"""--neuron row --compensation protect: each restored row solves its own two-sided least squares
(it used to fall back silently to plain restoration)."""

from __future__ import annotations

import torch

from surgery.hcnr.compensation import Problem, protect_rows, restore_and_compensate, restore_rows
from surgery.hcnr.options import PatchOptions
from surgery.hcnr.pipeline import make_patch
from surgery.patchfile import read_manifest, read_patch


def _problem(out=6, inp=8, seed=5):
    g = torch.Generator().manual_seed(seed)
    xh = torch.randn(64, inp, generator=g, dtype=torch.float64)
    xh[:, 1] += 0.5 * xh[:, 0]
    xt = torch.randn(40, inp, generator=g, dtype=torch.float64) + 0.3
    w0 = torch.randn(out, inp, generator=g, dtype=torch.float64)
    w1 = w0 + 0.3 * torch.randn(out, inp, generator=g, dtype=torch.float64)
    return xh, xt, w0, w1, 2.0 / 64 * xh.T @ xh, 2.0 / 40 * xt.T @ xt


def test_row_protect_equals_least_squares_per_row():
    xh, xt, w0, w1, hh, ht = _problem()
    rows, lam = torch.tensor([1, 4]), 0.7
    w, _ = protect_rows(Problem(w0, w1, rows, hh, ht, damp=1e-12, task_weight=lam))
    # independent: min_w ‖(w − W0_i) X_hon‖² (2/N_h) + λ ‖(w − W1_i) X_task‖² (2/N_t), stacked and solved
    sh, st = (2.0 / 64) ** 0.5, (lam * 2.0 / 40) ** 0.5
    a = torch.cat([sh * xh, st * xt])
    for i in rows.tolist():
        target = torch.cat([sh * xh @ w0[i], st * xt @ w1[i]])
        want = torch.linalg.lstsq(a, target[:, None]).solution[:, 0]
        assert torch.allclose(w[i], want, atol=1e-8)
    others = [i for i in range(6) if i not in rows.tolist()]
    assert torch.equal(w[others], w1[others])  # rows not restored keep W1


def test_row_protect_without_task_weight_is_plain_restoration():
    _, _, w0, w1, hh, ht = _problem()
    rows = torch.tensor([0, 3, 5])
    w, _ = protect_rows(Problem(w0, w1, rows, hh, ht, damp=0.01, task_weight=0.0))
    assert torch.equal(w, restore_rows(w0, w1, rows))


def test_rows_dispatch_protect_solves_and_other_methods_restore():
    _, _, w0, w1, hh, ht = _problem()
    rows = torch.tensor([2, 3])
    res = restore_and_compensate(w0, w1, hh, rows, "protect", 1e-6, ht, 1.0, neuron="row")
    assert res.method == "rows-protect" and res.damp_used is not None
    assert not torch.allclose(res.weight[rows], w0[rows])
    assert res.drift() is not None and res.drift_restored <= res.drift_patched < res.drift_sft
    for method in ("exact", "summed", "none"):
        plain = restore_and_compensate(w0, w1, hh, rows, method, neuron="row")
        assert plain.method == "rows-restore" and plain.drift() is None
        assert torch.equal(plain.weight, restore_rows(w0, w1, rows))


def test_row_protect_singular_falls_back_to_restoration():
    _, _, w0, w1, _, _ = _problem()
    zero = torch.zeros(8, 8, dtype=torch.float64)
    res = restore_and_compensate(w0, w1, zero, torch.tensor([1]), "protect", 0.01, zero, 1.0, neuron="row")
    assert res.method == "fallback-none"
    assert torch.equal(res.weight, restore_rows(w0, w1, torch.tensor([1])))


def test_patch_with_row_protect_is_not_plain_restoration(tiny_pair, calib, tmp_path):
    base, sft, _ = tiny_pair
    hon, task = calib
    protect, restore = tmp_path / "protect.safetensors", tmp_path / "restore.safetensors"
    report = make_patch(str(sft), str(base), hon, task, protect, PatchOptions(neuron="row", compensation="protect"))
    make_patch(str(sft), str(base), hon, task, restore, PatchOptions(neuron="row", compensation="none"))
    assert report.hessian_tokens > 0 and not report.fallbacks
    stats = read_manifest(protect).stats
    assert stats is not None and {m.method for m in stats.per_matrix.values()} == {"rows-protect"}
    _, got = read_patch(protect)
    _, plain = read_patch(restore)
    assert [(e.weight, e.index.tolist()) for e in got] == [(e.weight, e.index.tolist()) for e in plain]
    assert {e.unit for e in got} == {"rows"}
    assert got, "the row patch touched nothing"
    assert all(not torch.equal(a.values, b.values) for a, b in zip(got, plain))
