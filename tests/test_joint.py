"""Joint maps of several runs: one pass gives the joint Gram of stacked rows (each run from its own
θ_0), checked against a dense float64 reference; each run's own stats, cross-run cosines,
distances at matched steps and where runs part; sketches too; mismatched runs refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHAPES, stacked, write_run

import trajlib
from trajlib import hallmarks as H
from trajlib.gram.rows import stacked_rows
from trajlib.joint import cross_map, joint_map, matched_distances, run_stats, where_runs_part
from trajlib.manifest import TrajectoryError
from trajlib.sketch import SketchedTrajectory


def _runs_from_one_init(rng, T=9, part_at=4, gap=1e-4, n=3):
    """``n`` runs sharing θ_0 and their first ``part_at`` updates exactly, then each with its own
    small noise ``gap`` on top of a common drift: runs that part at step ``part_at``."""
    theta0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    common = [{k: rng.standard_normal(s) * 0.05 for k, s in SHAPES.items()} for _ in range(T - 1)]
    runs = []
    for r in range(n):
        own = np.random.default_rng(100 + r)
        theta = {k: v.astype(np.float64) for k, v in theta0.items()}
        out = [theta0]
        for t in range(T - 1):
            for k in theta:
                theta[k] = theta[k] + common[t][k] + (gap * (t + 1) * own.standard_normal(theta[k].shape)
                                                      if t + 1 >= part_at else 0)
            out.append({k: v.astype(np.float32) for k, v in theta.items()})
        runs.append(out)
    return runs


@pytest.fixture
def three(tmp_path, rng):
    thetas = _runs_from_one_init(rng)
    trajs = [trajlib.open_trajectory(write_run(tmp_path / f"r{i}", th)) for i, th in enumerate(thetas)]
    return trajs, [stacked(th) for th in thetas]


def test_the_joint_gram_is_that_of_the_stacked_rows(three):
    trajs, Xs = three
    stats = trajlib.gram(trajs, cache=False, progress=False, block_bytes=2048)
    starts = [r["offset"] for r in stats.meta["runs"]]
    assert starts == [0, 9, 18] and stats.T == 27
    R = stacked_rows(np.concatenate(Xs), starts)
    ref = R @ R.T
    assert np.max(np.abs(stats["all"] - ref)) <= 1e-12 * np.abs(ref).max()
    for k, traj in enumerate(trajs):  # each run's block is its own Gram
        alone = trajlib.gram(traj, cache=False, progress=False)["all"]
        np.testing.assert_allclose(run_stats(stats, k)["all"], alone, rtol=1e-13, atol=1e-13 * np.abs(alone).max())


def test_joint_and_cross_maps_match_dense_cosines(three):
    trajs, Xs = three
    stats = trajlib.gram(trajs, cache=False, progress=False)
    X = np.concatenate(Xs)
    n = np.linalg.norm(X, axis=1)
    dense = (X @ X.T) / np.outer(n, n)
    assert np.max(np.abs(joint_map(stats) - dense)) < 1e-12
    assert np.max(np.abs(cross_map(stats, "run0", "run2") - dense[:9, 18:])) < 1e-12
    np.testing.assert_allclose(H.trajectory_map(run_stats(stats, 1)["all"]), dense[9:18, 9:18], atol=1e-12)


def test_matched_distances_keep_small_gaps_that_norms_would_lose(three):
    """Runs from one init 1e-4 apart: the distance from the rows matches the dense difference
    to 1e-9 relative; the same distance from ‖θ_a‖² + ‖θ_b‖² − 2⟨θ_a, θ_b⟩ is off by far more."""
    trajs, Xs = three
    stats = trajlib.gram(trajs, cache=False, progress=False)
    steps, d = matched_distances(stats, 0, 1)
    want = np.linalg.norm(Xs[0] - Xs[1], axis=1)
    travel = np.linalg.norm(Xs[0] - Xs[0][0], axis=1)
    assert list(steps) == list(range(9)) and np.all(d[:4] <= 1e-7 * travel[:4])  # identical until they part
    np.testing.assert_allclose(d[4:], want[4:], rtol=1e-9)
    K = np.concatenate(Xs) @ np.concatenate(Xs).T
    naive = np.sqrt(np.clip(np.diag(K)[:9] + np.diag(K)[9:18] - 2 * np.diag(K[:9, 9:18]), 0, None))
    assert np.max(np.abs(naive[4:] - want[4:]) / want[4:]) > 100 * np.max(np.abs(d[4:] - want[4:]) / want[4:])


def test_where_runs_part_is_the_first_step_out_of_the_band(three):
    trajs, Xs = three
    stats = trajlib.gram(trajs, cache=False, progress=False)
    travel = np.linalg.norm(Xs[0] - Xs[0][0], axis=1)
    gap = np.linalg.norm(Xs[0] - Xs[1], axis=1)
    for band in (1e-5, 1e-3, 1e-2):
        want = next((t for t in range(1, 9) if gap[t] > band * travel[t]), None)
        assert where_runs_part(stats, 0, 1, band=band) == want
    assert where_runs_part(stats, 0, 1, band=1e-5) == 4  # the step the runs were built to part at


def test_joint_sketches_stack_rows_the_same_way(rng):
    k, T = 16, 6
    runs = [SketchedTrajectory(np.arange(T) * 10, {"all": rng.standard_normal((T, k))}, {"all": 500},
                               {"kind": "countsketch", "k": k, "seed": 0}, f"s{i}") for i in range(2)]
    stats = trajlib.gram(runs)
    R = stacked_rows(np.concatenate([r.sketches["all"] for r in runs]), [0, T])
    np.testing.assert_allclose(stats["all"], R @ R.T, rtol=1e-14)
    np.testing.assert_allclose(run_stats(stats, 1)["all"], trajlib.gram(runs[1])["all"], rtol=1e-14)
    other = SketchedTrajectory(runs[0].steps, runs[0].sketches, {"all": 500}, {"kind": "countsketch", "k": k,
                                                                              "seed": 1}, "s-other")
    with pytest.raises(ValueError, match="s-other: sketched with .* needs one sketch"):
        trajlib.gram([runs[0], other])


def test_runs_of_different_architectures_are_refused_and_joint_stats_cannot_be_subsampled(three, tmp_path, rng):
    trajs, _ = three
    odd = {**{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()},
           "fc.weight": rng.standard_normal((12, 32)).astype(np.float32)}
    other = trajlib.open_trajectory(write_run(tmp_path / "odd", [odd, odd]))
    with pytest.raises(TrajectoryError, match="odd: tensor 'fc.weight' differs from .*r0"):
        trajlib.gram([trajs[0], other], cache=False, progress=False)
    stats = trajlib.gram(trajs[:2], cache=False, progress=False)
    with pytest.raises(ValueError, match="run_stats first"):
        stats.select([0, 1])
