"""The loss on a plane: random filter-normalised directions, streamed plane coordinates, the loss
grid against direct evaluation, and the plot."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from conftest import SHAPES, random_walk, stacked, write_run

import trajlib
from trajlib import landscape as L
from trajlib.pca import directions, read_directions, trajectory_pca

matplotlib.use("Agg")


@pytest.fixture
def walk(tmp_path):
    thetas = random_walk(np.random.default_rng(4), SHAPES, 10)
    run = write_run(tmp_path / "walk", thetas)
    traj = trajlib.open_trajectory(run)
    return traj, stacked(thetas), trajlib.gram(traj, cache=False, progress=False)


def test_random_directions_are_filter_normalised():
    center = {"conv.weight": torch.randn(8, 3, 3, 3, dtype=torch.float64), "conv.bias": torch.randn(8)}
    d = L.random_directions(center, k=2, seed=1)
    assert d["conv.weight"].shape == (2, 8, 3, 3, 3)
    for j in range(2):
        np.testing.assert_allclose(d["conv.weight"][j].reshape(8, -1).norm(dim=1),
                                   center["conv.weight"].reshape(8, -1).norm(dim=1), rtol=1e-9)
    assert torch.all(d["conv.bias"] == 0)
    assert not torch.allclose(d["conv.weight"][0], d["conv.weight"][1])
    assert torch.equal(L.random_directions(center, seed=1)["conv.weight"], d["conv.weight"])
    kept = L.random_directions(center, seed=1, ignore_1d=False)["conv.bias"]
    assert torch.equal(kept[0], center["conv.bias"].double())


def test_plane_coordinates_agree_with_pca_and_with_dense_least_squares(walk):
    traj, X, stats = walk
    p = trajectory_pca(stats, k=2)
    d = read_directions(directions(traj, p, dtype="F64", progress=False))
    for c in (-1, 0, 4):
        xy = L.plane_coordinates(traj, d.tensors, center=c, block_bytes=100, progress=False)
        np.testing.assert_allclose(xy, p.relative_to(c), atol=1e-10 * np.abs(p.coords).max())
    center = L.checkpoint_state(traj, names=traj.parameters)
    rd = L.random_directions(center, seed=2)
    xy = L.plane_coordinates(traj, rd, center=-1, progress=False)
    V = torch.cat([t.reshape(2, -1) for t in rd.values()], dim=1).numpy()
    want = np.linalg.lstsq(V.T, (X - X[-1]).T, rcond=None)[0].T
    np.testing.assert_allclose(xy, want, atol=1e-9 * np.abs(want).max())
    # random directions barely see the path (Li et al. 2018): far less of it than the PCA plane
    from trajlib.pca import in_plane_fraction

    seen = L.plane_fraction(xy, rd, stats["all"])
    res = (X[:-1] - X[-1]) - (V.T @ want[:-1].T).T  # dense residual off the random plane
    np.testing.assert_allclose(seen[:-1], 1 - (res**2).sum(1) / ((X[:-1] - X[-1]) ** 2).sum(1), rtol=1e-8)
    pca_seen = in_plane_fraction(p, stats["all"])
    np.testing.assert_allclose(L.plane_fraction(p.relative_to(-1), d.tensors, stats["all"]), pca_seen, rtol=1e-9)
    assert np.nanmax(seen) < 0.5 * np.nanmax(pca_seen)
    with pytest.raises(ValueError, match="'nope' is not a tensor"):
        L.plane_coordinates(traj, {"nope": torch.zeros(2, 3)}, progress=False)


def test_loss_surface_matches_direct_evaluation_and_restores_the_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    center = {n: p.detach().double() + 0.1 for n, p in model.named_parameters()}
    dirs = L.random_directions(center, seed=0, ignore_1d=False)
    x, y = torch.randn(40, 4), torch.randn(40, 1)
    data = [(x[:25], y[:25]), (x[25:], y[25:])]  # unequal batches: weighted by size
    a, b = np.linspace(-1, 1, 3), np.linspace(-0.5, 0.5, 4)
    Z = L.loss_surface(model, torch.nn.functional.mse_loss, data, center=center, directions=dirs,
                       alphas=a, betas=b, progress=False)
    assert Z.shape == (3, 4)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            with torch.no_grad():
                for n, p in ref.named_parameters():
                    p.copy_(center[n] + ai * dirs[n][0] + bj * dirs[n][1])
                want = torch.nn.functional.mse_loss(ref(x), y).item()
            assert Z[i, j] == pytest.approx(want, rel=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="'0.weight' has shape"):
        L.loss_surface(model, torch.nn.functional.mse_loss, data, center=center,
                       directions={"0.weight": torch.zeros(3, 4)}, alphas=a, betas=b, progress=False)
    with pytest.raises(ValueError, match="batchnorm='eval'"):
        L.loss_surface(model, torch.nn.functional.mse_loss, data, center=center, directions=dirs,
                       alphas=a, betas=b, batchnorm="eval", progress=False)


def test_batchnorm_batch_mode_uses_batch_statistics():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 1))
    center = {n: p.detach().double() for n, p in model.named_parameters()}
    dirs = {n: torch.zeros(2, *p.shape) for n, p in model.named_parameters()}
    x = 3 + 2 * torch.randn(64, 3)
    y = torch.randn(64, 1)
    kw = dict(center=center, directions=dirs, alphas=[0.0], betas=[0.0], progress=False)
    running = L.loss_surface(model, torch.nn.functional.mse_loss, [(x, y)], **kw)[0, 0]
    batch = L.loss_surface(model, torch.nn.functional.mse_loss, [(x, y)], batchnorm="batch", **kw)[0, 0]
    assert torch.equal(model[1].running_mean, torch.zeros(5))  # restored after the batch-mode pass
    model.train()
    with torch.no_grad():
        want = torch.nn.functional.mse_loss(model(x), y).item()
    assert batch == pytest.approx(want, rel=1e-6) and abs(batch - running) > 1e-3


def test_grid_and_plot(walk):
    traj, _, stats = walk
    p = trajectory_pca(stats, k=2)
    xy = p.relative_to(-1)
    a, b = L.grid_around(xy, n=7, margin=0.2)
    assert a[0] < xy[:, 0].min() and a[-1] > xy[:, 0].max() and b[0] < xy[:, 1].min() and len(b) == 7
    Z = np.add.outer(a**2, b**2) + 0.1
    ax = trajlib.plot.loss_plane(a, b, Z, xy, labels=stats.steps, explained=p.explained_variance_ratio, max_labels=4)
    assert f"{100 * p.explained_variance_ratio[0]:.1f}% of variance" in ax.get_xlabel()
    assert len(ax.texts) == 4 and ax.texts[0].get_text() == "0"
    np.testing.assert_allclose(ax.lines[0].get_xydata(), xy)
    with pytest.raises(ValueError, match="coords must be"):
        L.grid_around(xy[:, :1])


def test_the_readme_pca_view_runs_on_the_readme_run(tmp_path):
    import re
    import subprocess
    import sys

    from conftest import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    first = next(b for b in blocks if "Recorder" in b)
    view = next(b for b in blocks if "trajectory_pca" in b)
    (tmp_path / "example.py").write_text(first + view)
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "plane.png").stat().st_size > 1000
    assert len(list((tmp_path / "runs" / "mine").glob("pca-*.safetensors"))) == 1
