"""Sketched dense-in-time maps: the recorded sketches are the stated linear map, the sketched
map's error stays within the stated sqrt(2/k) and shrinks as k grows, and the Gram engine
and the plots accept sketched trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trajlib
from trajlib import hallmarks as H
from trajlib.sketch import DEFAULT_K, CountSketch, SketchedTrajectory


def train_every_step(steps=50, seed=0):
    """θ_0..θ_steps (steps+1, P) float64 of a small MLP trained with momentum and weight decay."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()  # noqa: E731
    X = [flat()]
    for _ in range(steps):
        x = torch.randn(32, 32)
        loss = (model(x) - x[:, :4]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        X.append(flat())
    return np.stack(X)


@pytest.fixture(scope="module")
def exact():
    X = train_every_step()
    return X, H.gram_from_checkpoints(X)


def rms_errors(X, G, k, seed):
    cs = CountSketch(k, seed=seed)
    Y = np.stack([cs.apply(x) for x in X])
    sk = SketchedTrajectory(np.arange(len(X)), {"all": Y}, {"all": X.shape[1]}, {"k": k, "seed": seed})
    Gs = trajlib.gram(sk)["all"]
    out = {}
    for name in ("trajectory_map", "update_map", "relative_map"):
        E = getattr(H, name)(Gs) - getattr(H, name)(G)
        out[name] = float(np.sqrt(np.mean(E[~np.eye(len(E), dtype=bool)] ** 2)))
    return out


def test_sketch_error_within_the_stated_bound_and_shrinking_with_k(exact):
    X, G = exact
    bound = np.sqrt(2 / DEFAULT_K)
    errs = [rms_errors(X, G, DEFAULT_K, seed) for seed in range(8)]
    for name in errs[0]:
        assert all(e[name] <= bound for e in errs), (name, [e[name] for e in errs], bound)
    med = {k: np.median([rms_errors(X, G, k, s)["update_map"] for s in range(5)]) for k in (64, 256, 1024, 4096)}
    ks = sorted(med)
    assert all(med[a] > med[b] for a, b in zip(ks, ks[1:])), med
    assert med[64] / med[4096] > 4  # about sqrt(64) = 8 for an error ∝ 1/sqrt(k)
    for k in ks:
        assert med[k] <= np.sqrt(2 / k)


def test_recorded_sketches_are_the_stated_linear_map(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with trajlib.Recorder(model, tmp_path / "r", every=1, buffers=True,
                          sketch={"k": 128, "seed": 7, "every": 2, "groups": ["all", "w=weight"]}) as rec:
        for step in range(1, 11):
            loss = model(torch.randn(8, 16)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
    traj = trajlib.open_trajectory(tmp_path / "r")
    sk = traj.sketches()
    assert list(sk.steps) == [0, 2, 4, 6, 8, 10] and sk.k == 128 and sk.meta["seed"] == 7
    cs = CountSketch(128, seed=7)
    offsets = np.cumsum([0] + [traj.numel(n) for n in traj.names])  # global index: all recorded tensors
    for row, step in enumerate(sk.steps):
        t = int(np.searchsorted(traj.steps, step))
        for group, names in (("all", traj.parameters), ("w", [n for n in traj.names if "weight" in n])):
            ref = sum(cs.apply(traj.tensor(t, n).ravel(), offset=int(offsets[traj.names.index(n)])) for n in names)
            np.testing.assert_allclose(sk.sketches[group][row], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    stats = trajlib.gram(sk)
    assert stats.meta["approximate"] and stats.meta["sketch"]["k"] == 128 and stats.n_params["all"] == traj.P
    with pytest.raises(ValueError, match="'bn' was not sketched"):
        trajlib.gram(sk, groups=["bn"])


def test_hash_spreads_buckets_and_signs_evenly():
    cs = CountSketch(256, seed=3)
    idx = cs.index(torch.arange(1 << 18)).numpy()
    counts = np.bincount(idx, minlength=512)
    assert counts.shape == (512,)
    expected = (1 << 18) / 512
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 511 + 6 * np.sqrt(2 * 511)  # far in the tail of χ²(511) only for a biased hash
    assert not np.array_equal(idx, CountSketch(256, seed=4).index(torch.arange(1 << 18)).numpy())
    with pytest.raises(ValueError, match="k=1"):
        CountSketch(1)


def test_plot_draws_thousands_of_rows_as_block_means():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from trajlib import plot

    T = 3000
    C = np.cos(np.subtract.outer(np.arange(T), np.arange(T)) / 800.0)
    ax = plot.trajectory_map(C, labels=np.arange(T) * 10, axis_label="step", max_cells=300)
    img = ax.get_images()[0].get_array()
    assert img.shape == (300, 300)
    np.testing.assert_allclose(img[0, 0], C[:10, :10].mean())
    assert ax.get_xticklabels()[-1].get_text() != ""
    matplotlib.pyplot.close(ax.figure)
