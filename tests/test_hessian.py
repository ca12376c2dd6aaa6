"""The top Hessian eigenpair by torch.func power iteration against a dense Hessian, and the
oscillation summaries of per-step projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trajlib.paper.hessian import oscillation_summary, oscillation_window, top_eigenvector


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    return model, x, y


def test_power_iteration_finds_the_dense_top_eigenpair():
    model, x, y = tiny()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    before = {n: b.clone() for n, b in model.named_buffers()}
    lam, v = top_eigenvector(model.double(), x.double(), y, iters=500, tol=0.0)
    for n, b in model.named_buffers():  # BatchNorm's running statistics are untouched
        assert torch.equal(b.float(), before[n].float())

    def loss(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            ps[n] = flat[i: i + k].view(s)
            i += k
        return F.cross_entropy(torch.func.functional_call(model, ps, (x.double(),)), y)

    H = torch.autograd.functional.hessian(loss, flat0).numpy()
    w, V = np.linalg.eigh(H)
    top = int(np.argmax(np.abs(w)))
    assert lam == pytest.approx(w[top], rel=1e-5)
    vflat = torch.cat([v[n].reshape(-1) for n in names]).numpy()
    assert abs(vflat @ V[:, top]) == pytest.approx(1.0, abs=1e-3)


def test_oscillation_summary_tells_flips_from_drift():
    t = np.arange(50)
    assert oscillation_summary((-1.0) ** t)["sign_flip_fraction"] == 1.0
    assert oscillation_summary((-1.0) ** t)["lag1_autocorrelation"] < -0.9
    assert oscillation_summary(1.0 + 0.01 * t)["sign_flip_fraction"] == 0.0
    with pytest.raises(ValueError, match="at least 3"):
        oscillation_summary([1.0])


def test_window_records_projections_on_the_direction():
    model, x, y = tiny()
    lam, v = top_eigenvector(model, x, y, iters=50)
    table = oscillation_window(model, [(x, y)], direction=v, lr=0.05, momentum=0.9, weight_decay=1e-3,
                               steps=12, warmup=3)
    assert list(table.step) == list(range(1, 13))
    assert np.isfinite(table["proj:top"]).all() and (table["cos:top"].abs() <= 1).all()
