"""Notebook 09's harness: the saturation of the prefix MDS per run, the dead-end grid, profiles."""

from __future__ import annotations

import numpy as np
import pytest

from trajlib import hallmarks as H
from trajlib.paper.saturation import dead_end_grid, run_profiles, saturation_table
from trajlib.stats import GramStats


def stats_of(X, steps):
    return GramStats(np.asarray(steps), np.zeros(len(X)), {"all": H.gram_from_checkpoints(X)}, {"all": X.shape[1]})


def test_a_trajectory_that_turns_then_stops_saturates_where_it_stops():
    # θ turns from e1 towards e2 over the first 4 steps, then stays put for 6 more
    angles = np.concatenate([np.linspace(0, np.pi / 2, 5), np.full(6, np.pi / 2)])
    X = np.stack([np.cos(angles), np.sin(angles), np.full_like(angles, 1e-3) * np.arange(11)], axis=1)
    table = saturation_table({("turn", 0): stats_of(X, np.arange(11) * 10)}, tol=0.05, relative=False,
                             initial_phase=0.5)
    row = table.iloc[0]
    curve = H.prefix_mds(H.gram_from_checkpoints(X))
    k = H.saturation_index(curve, tol=0.05)
    assert row["saturation_step"] == (k + 1) * 10 and row["saturation_fraction"] == pytest.approx((k + 1) / 10)
    assert row["effect"] == pytest.approx(0.5 - (k + 1) / 10) and row["mds"] == pytest.approx(H.mds(H.gram_from_checkpoints(X)))
    assert all(abs(curve[j] - curve[-1]) <= 0.05 for j in range(k, len(curve))) and abs(curve[k - 1] - curve[-1]) > 0.05
    assert row["gap"] == pytest.approx(abs(curve[4] - curve[-1]))  # the prefix ending at step 50
    assert row["min_fraction"] == pytest.approx((np.argmin(curve) + 1) / 10)
    # a straight line from θ_0 outwards is saturated from the start: every cosine is 1
    line = np.outer(1 + np.arange(6.0), [1.0, 2.0])
    assert saturation_table({("line", 0): stats_of(line, np.arange(6))}, tol=1e-9,
                            relative=False)["saturation_fraction"].item() == 0.2
    # relative: the band is tol × (1 − MDS), the same standard for runs at different MDS levels
    rel = saturation_table({("turn", 0): stats_of(X, np.arange(11) * 10)}, tol=0.2).iloc[0]
    assert rel["band"] == pytest.approx(0.2 * (1 - curve[-1]))
    assert rel["saturation_step"] == (H.saturation_index(curve, tol=rel["band"]) + 1) * 10


def test_dead_end_grid_and_profiles():
    grid = dead_end_grid(model_kwargs={"width": 8}, small_lr=1e-4, vit="tiny_vit", vit_kwargs={"dim": 16})
    assert list(grid) == ["healthy", "lr too small", "dead init", "ViT"]
    assert grid["dead init"]["model_kwargs"] == {"width": 8, "bn_init": 0.0} and grid["lr too small"] == {"lr": 1e-4}
    assert "ViT" not in dead_end_grid(model_kwargs={}, small_lr=1e-3)
    X = np.random.default_rng(0).normal(size=(5, 7))
    prof = run_profiles({("a", 0): stats_of(X, [0, 2, 4, 6, 8]), ("b", 1): stats_of(X[:3], [0, 5, 10])})
    assert len(prof) == 8 and set(prof["label"]) == {"a", "b"}
    a = prof[prof.label == "a"]
    np.testing.assert_allclose(a["distance_from_init"], np.linalg.norm(X - X[0], axis=1), rtol=1e-10)
    np.testing.assert_allclose(a["step_norm"].iloc[:-1], np.linalg.norm(np.diff(X, axis=0), axis=1), rtol=1e-10)
    np.testing.assert_allclose(a["fraction"], [0, 0.25, 0.5, 0.75, 1.0])
