"""Trajectory PCA from the Gram against scikit-learn's PCA and a dense SVD of the stacked run;
the streamed directions pass stays O(block) in memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import SHAPES, random_walk, stacked, write_run
from sklearn.decomposition import PCA

import trajlib
from trajlib import hallmarks as H
from trajlib.pca import (coefficients, directions, in_plane_fraction, random_walk_pca, read_directions,
                         squared_distances, trajectory_pca)


@pytest.fixture
def walk(tmp_path):
    thetas = random_walk(np.random.default_rng(3), SHAPES, 14)
    run = write_run(tmp_path / "walk", thetas)
    stats = trajlib.gram(trajlib.open_trajectory(run), cache=False, progress=False)
    return run, stacked(thetas), stats


def signs(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-column sign aligning ``ref`` (T, k) with ``ours``."""
    return np.sign((ours * ref).sum(axis=0))


def test_coordinates_and_explained_variance_match_sklearn(walk):
    _, X, stats = walk
    p = trajectory_pca(stats, k=4)
    sk = PCA(n_components=4, svd_solver="full").fit(X)
    Z = sk.transform(X)
    scale = np.abs(Z).max()
    assert np.abs(p.coords - Z * signs(p.coords, Z)).max() <= 1e-8 * scale
    np.testing.assert_allclose(p.explained_variance_ratio, sk.explained_variance_ratio_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(p.explained_variance, sk.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(p.singular_values, sk.singular_values_, rtol=1e-8)
    assert p.total == pytest.approx(((X - X.mean(0)) ** 2).sum(), rel=1e-10)
    # orientation: every path runs from the first checkpoint towards +
    assert np.all(p.coords[-1] > p.coords[0])


def test_displacement_convention_matches_the_svd_of_displacements(walk):
    _, X, stats = walk
    p = trajectory_pca(stats, k=3, centered=False)
    D = X - X[0]  # d_0 = 0 included: it adds nothing to an uncentred SVD
    Uu, S, Vt = np.linalg.svd(D, full_matrices=False)
    Z = Uu[:, :3] * S[:3]
    assert np.abs(p.coords - Z * signs(p.coords, Z)).max() <= 1e-8 * np.abs(Z).max()
    np.testing.assert_allclose(p.explained_variance_ratio, S[:3] ** 2 / (S**2).sum(), atol=1e-10)
    assert np.allclose(p.coords[0], 0.0, atol=1e-12)  # θ_0 is the origin of this convention
    # the two conventions differ on a drifting walk: the mean is not θ_0
    assert not np.allclose(trajectory_pca(stats, k=3).explained_variance_ratio, p.explained_variance_ratio, atol=1e-3)


@pytest.mark.parametrize("dtype,tol", [("F64", 1e-10), ("F32", 1e-6)])
def test_streamed_directions_match_the_dense_svd(walk, dtype, tol):
    run, X, stats = walk
    p = trajectory_pca(stats, k=3)
    path = directions(trajlib.open_trajectory(run), p, dtype=dtype, block_bytes=200, progress=False)
    assert path.parent == run and path.suffix == ".safetensors"
    d = read_directions(path)
    assert list(d.tensors) == list(SHAPES) and d.tensors["conv.weight"].shape == (3, 8, 3, 3, 3)
    assert d.meta["group"] == "all" and d.meta["convention"] == "centered" and d.meta["steps"] == list(range(14))
    V = d.flat().numpy()
    Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:3]
    assert np.abs(V - Vt * signs(V.T, Vt.T)[:, None]).max() <= tol
    np.testing.assert_allclose(V @ V.T, np.eye(3), atol=10 * tol)
    # the coordinates are the projections of the centred checkpoints on these directions
    np.testing.assert_allclose((X - X.mean(0)) @ V.T, p.coords, atol=tol * 10 * np.abs(p.coords).max())
    assert directions(trajlib.open_trajectory(run), p, dtype=dtype, progress=False) == path  # reused by key


def test_centring_from_updates_survives_where_the_checkpoint_gram_cancels(tmp_path):
    """Late training: steps of 1e-6 of ‖θ‖. The Gram-based PCA agrees with a dense float64 PCA;
    centring the checkpoint Gram K instead (a subtraction of large Gram entries) loses digits, so
    the comparison can tell them apart."""
    rng = np.random.default_rng(5)
    P, T = 20000, 10
    base, v = 100 * rng.standard_normal(P), rng.standard_normal(P)
    noise = np.cumsum(rng.standard_normal((T, P)), axis=0)
    thetas = [{"w": (base + 1e-4 * (t * v + noise[t])).astype(np.float32)} for t in range(T)]
    X = stacked(thetas)
    stats = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "late", thetas)), cache=False, progress=False)
    p = trajectory_pca(stats, k=3)
    ref = PCA(n_components=3, svd_solver="full").fit(X - X[0])  # X − X[0] is exact; centring X itself is not
    Z = ref.transform(X - X[0])
    assert np.abs(p.coords - Z * signs(p.coords, Z)).max() <= 1e-8 * np.abs(Z).max()
    lam = ref.singular_values_**2
    ours = np.abs(p.singular_values**2 - lam).max() / lam[0]
    C = np.eye(T) - 1.0 / T
    naive = np.linalg.eigvalsh(C @ H.checkpoint_gram(stats["all"]) @ C)[::-1][:3]
    assert ours < 1e-10
    assert np.abs(naive - lam).max() / lam[0] > 100 * ours


def test_squared_distances_and_in_plane_fraction(walk):
    _, X, stats = walk
    ref = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(stats["all"]), ref, rtol=1e-10, atol=1e-12)
    p = trajectory_pca(stats, k=2)
    frac = in_plane_fraction(p, stats["all"], center=-1)
    V = np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:2]
    want = (((X[:-1] - X[-1]) @ V.T) ** 2).sum(1) / ref[-1, :-1]
    np.testing.assert_allclose(frac[:-1], want, rtol=1e-8)
    assert np.isnan(frac[-1]) and np.all((frac[:-1] > 0) & (frac[:-1] <= 1 + 1e-12))


def test_a_group_writes_only_its_tensors(walk):
    run, X, _ = walk
    stats = trajlib.gram(trajlib.open_trajectory(run), groups=["matrices"], cache=False, progress=False)
    p = trajectory_pca(stats, group="matrices", k=2)
    d = read_directions(directions(trajlib.open_trajectory(run), p, dtype="F64", progress=False))
    assert list(d.tensors) == ["conv.weight", "fc.weight"]
    cols = np.concatenate([np.full(int(np.prod(s)), len(s) >= 2) for s in SHAPES.values()])
    Xm = X[:, cols]
    Vt = np.linalg.svd(Xm - Xm.mean(0), full_matrices=False)[2][:2]
    V = d.flat().numpy()
    assert np.abs(V - Vt * signs(V.T, Vt.T)[:, None]).max() < 1e-10


def test_bad_input_is_named(walk, tmp_path):
    run, _, stats = walk
    with pytest.raises(ValueError, match="at most 13 principal components"):
        trajectory_pca(stats, k=14)
    with pytest.raises(KeyError, match="no group 'bn'"):
        trajectory_pca(stats, group="bn")
    line = [{"w": (np.ones(50) * (1 + 0.1 * t)).astype(np.float32)} for t in range(5)]  # a straight line
    st = trajlib.gram(trajlib.open_trajectory(write_run(tmp_path / "line", line)), cache=False, progress=False)
    assert trajectory_pca(st, k=1).explained_variance_ratio[0] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="component 2 of group 'all' has no variance"):
        trajectory_pca(st, k=2)
    p = trajectory_pca(stats, k=2)
    with pytest.raises(trajlib.TrajectoryError, match="not the same trajectory"):
        directions(trajlib.open_trajectory(run).select(slice(0, 10)), p, progress=False)
    with pytest.raises(ValueError, match="dtype='F16'"):
        directions(trajlib.open_trajectory(run), p, dtype="F16", progress=False)


def test_coefficients_give_displacements_and_their_centring():
    X = np.random.default_rng(0).standard_normal((6, 4))
    R = np.vstack([X[:1], np.diff(X, axis=0)])
    np.testing.assert_allclose(coefficients(6, centered=False) @ R, X - X[0], atol=1e-12)
    np.testing.assert_allclose(coefficients(6, centered=True) @ R, X - X.mean(0), atol=1e-12)


def test_random_walk_reference_matches_a_simulated_walk_and_the_continuum_limit():
    rng = np.random.default_rng(7)
    T = 30
    X = np.cumsum(rng.standard_normal((T, 100000)), axis=0)  # nearly orthogonal steps
    sim = PCA(n_components=2, svd_solver="full").fit(X).explained_variance_ratio_
    ref = random_walk_pca(T, k=2).explained_variance_ratio
    np.testing.assert_allclose(ref, sim, atol=0.01)
    big = random_walk_pca(400, k=2).explained_variance_ratio
    np.testing.assert_allclose(big, [6 / np.pi**2, 6 / np.pi**2 / 4], atol=2e-3)


MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import trajlib
    from trajlib.pca import directions, trajectory_pca

    def mb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024

    def reset_peak():  # VmHWM := VmRSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    small, big = sys.argv[1], sys.argv[2]
    for run in (small, big):  # the small run warms imports, allocator and page cache paths
        traj = trajlib.open_trajectory(run)
        p = trajectory_pca(trajlib.gram(traj, cache=False, progress=False), k=2)
        reset_peak()
        base = mb("VmRSS")
        directions(traj, p, block_bytes=1 << 18, progress=False, path=f"{run}.dirs.safetensors")
    streamed = mb("VmHWM") - base
    reset_peak()
    base = mb("VmRSS")
    X = np.stack([traj.flat(t) for t in range(traj.T)])  # what stacking the run costs
    dense = mb("VmHWM") - base
    print(json.dumps({"streamed_mb": streamed, "dense_mb": dense, "run_mb": traj.nbytes / 2**20}))
""")



def _linear_run(path: Path, T: int, width: int) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(width, width, bias=False)
    with torch.no_grad(), trajlib.Recorder(model, path, every=1) as rec:
        for step in range(1, T):
            model.weight.add_(1e-2 * torch.randn_like(model.weight))
            rec.step(step)
    return path


def test_directions_pass_memory_is_o_block_not_o_run(tmp_path):
    """A 64 MiB run streamed with 256 KiB blocks: the directions pass's peak resident growth
    (VmHWM reset before it) stays under an 8 MiB budget, an eighth of the run, while stacking the
    same run exceeds it many times over (the budget is one a dense copy could not meet)."""
    small = _linear_run(tmp_path / "small", 4, 64)
    big = _linear_run(tmp_path / "big", 16, 1024)  # 16 × 1M float32 = 64 MiB
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(small), str(big)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["run_mb"] == pytest.approx(64, rel=0.01)
    assert m["streamed_mb"] < 8, m
    assert m["dense_mb"] > m["run_mb"], m  # the budget is one a stacked copy could not meet
    d = read_directions(f"{big}.dirs.safetensors")
    assert d.tensors["weight"].shape == (2, 1024, 1024)


def test_a_fresh_recording_removes_the_old_directions(walk):
    run, _, stats = walk
    path = directions(trajlib.open_trajectory(run), trajectory_pca(stats, k=2), progress=False)
    assert path.exists()
    write_run(run, random_walk(np.random.default_rng(9), SHAPES, 4), fresh=True)
    assert not list(run.glob("pca-*"))
