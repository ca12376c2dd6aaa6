"""Pure hallmark algebra: known answers and properties (hypothesis) against the direct definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import oracle
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import trajlib
from trajlib import hallmarks as H
from trajlib.stats import GramStats


def gram_of(X: np.ndarray) -> np.ndarray:
    """G of the rows [θ_0; u_0..u_{T-2}], computed directly (the engine's definition)."""
    R = np.vstack([X[:1], np.diff(X, axis=0)])
    return R @ R.T


trajectories = st.integers(3, 9).flatmap(lambda T: st.integers(4, 40).flatmap(
    lambda P: arrays(np.float64, (T, P), elements=st.floats(-3, 3, allow_nan=False, width=32))))


def nondegenerate(X):
    U = np.diff(X, axis=0)
    return (np.linalg.norm(X, axis=1).min() > 1e-3 and np.linalg.norm(U, axis=1).min() > 1e-3
            and np.linalg.norm(X - X[0], axis=1)[1:].min() > 1e-3)


@settings(max_examples=60, deadline=None)
@given(trajectories)
def test_every_hallmark_matches_its_definition(X):
    assume(nondegenerate(X))
    G = gram_of(X)
    ref = oracle(X)
    for name in ("trajectory_map", "relative_map", "update_map", "consecutive_update_cos", "update_param_cos"):
        np.testing.assert_allclose(getattr(H, name)(G), np.clip(ref[name], -1, 1), atol=1e-8, err_msg=name)
    for name in ("param_norm", "step_norm", "distance_from_init"):
        np.testing.assert_allclose(getattr(H, name)(G), ref[name], rtol=1e-8, atol=1e-10, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(trajectories)
def test_maps_are_symmetric_with_unit_diagonal_and_mds_conventions_agree(X):
    assume(nondegenerate(X))
    G = gram_of(X)
    T = len(X)
    for C in (H.trajectory_map(G), H.relative_map(G), H.update_map(G)):
        np.testing.assert_array_equal(C, C.T)
        np.testing.assert_allclose(np.diag(C), 1.0, atol=1e-9)
        assert np.all(np.abs(C) <= 1.0)
    assert H.mds_full(G) == pytest.approx((T - 1) / T * H.mds(G) + 1 / T, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(trajectories, st.data())
def test_groups_add_up_and_subsets_follow_from_the_gram(X, data):
    assume(nondegenerate(X))
    cut = data.draw(st.integers(1, X.shape[1] - 1))
    np.testing.assert_allclose(gram_of(X[:, :cut]) + gram_of(X[:, cut:]), gram_of(X), rtol=1e-10, atol=1e-10)
    idx = sorted(set(data.draw(st.lists(st.integers(0, len(X) - 1), min_size=2, max_size=len(X)))))
    assume(len(idx) >= 2)
    stats = GramStats(np.arange(len(X)), np.zeros(len(X)), {"all": gram_of(X)}, {"all": X.shape[1]})
    np.testing.assert_allclose(stats.select(idx)["all"], gram_of(X[idx]), rtol=1e-9, atol=1e-9)


def test_straight_line_and_right_angle_known_answers():
    e = np.eye(3)
    line = np.stack([e[0] + t * e[1] for t in range(5)])  # equal steps along e1
    G = gram_of(line)
    assert H.straightness(G) == pytest.approx(1.0)
    assert H.path_length(G) == pytest.approx(4.0)
    np.testing.assert_allclose(H.consecutive_update_cos(G), 1.0)
    np.testing.assert_allclose(H.angle_from_init(G), np.degrees(np.arctan(np.arange(5))), atol=1e-12)
    zigzag = np.stack([e[0], e[0] + e[1], e[0], e[0] + e[1]])  # back and forth
    Gz = gram_of(zigzag)
    np.testing.assert_allclose(H.consecutive_update_cos(Gz), -1.0)
    assert H.straightness(Gz) == pytest.approx(1 / 3)
    shrink = np.stack([2 * e[0], 1.5 * e[0], 1.0 * e[0]])  # weight-decay-like shrinking
    np.testing.assert_allclose(H.update_param_cos(gram_of(shrink)), -1.0)


def test_tables_have_the_design_columns():
    X = np.random.default_rng(0).standard_normal((6, 20)) + 3
    stats = GramStats(np.arange(6) * 10, np.arange(6.0), {"all": gram_of(X), "half": gram_of(X[:, :10])},
                      {"all": 20, "half": 10})
    table = trajlib.hallmark_table(stats)
    assert list(table.index) == ["all", "half"]
    for col in ("mds", "mds_full", "relative_mds", "update_mds", "path_length", "displacement", "straightness"):
        assert col in table.columns
    curves = H.per_checkpoint(stats, "all")
    assert isinstance(curves, pd.DataFrame) and len(curves) == 6
    assert curves["consecutive_update_cos"].isna().sum() == 2 and curves["step_norm"].isna().sum() == 1
    with pytest.raises(KeyError, match="no group 'nope'"):
        stats["nope"]
    with pytest.raises(ValueError, match=r"\(T, T\)"):
        H.trajectory_map(np.zeros((3, 4)))


def test_zero_updates_give_nan_not_crashes():
    X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # a repeated checkpoint
    G = gram_of(X)
    assert np.isnan(H.update_map(G)[1, 0])
    assert np.isfinite(H.update_mds(G))


@settings(max_examples=40, deadline=None)
@given(trajectories)
def test_prefix_mds_is_the_mds_of_each_prefix(X):
    assume(nondegenerate(X))
    direct = [H.mds(gram_of(X[: k + 1])) for k in range(1, len(X))]
    np.testing.assert_allclose(H.prefix_mds(gram_of(X)), direct, atol=1e-12)
    assert H.prefix_mds(gram_of(X))[-1] == pytest.approx(H.mds(gram_of(X)), abs=1e-12)


def test_prefix_mds_of_a_known_trajectory():
    # θ_0 = e1, then e2 and e2 again: C_01 = 0, C_02 = 0, C_12 = 1 → prefixes 0, then 1/3
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0 + 1e-9]])
    np.testing.assert_allclose(H.prefix_mds(gram_of(X)), [0.0, 1 / 3], atol=1e-9)


def test_saturation_index_is_the_first_step_after_which_the_curve_stays_in_the_band():
    y = [1.0, 0.5, 0.2, 0.31, 0.3, 0.3]
    assert H.saturation_index(y, tol=0.15) == 2
    assert H.saturation_index(y, tol=0.05) == 3
    assert H.saturation_index(y, tol=0.005) == 4   # 0.31 is outside a band of 0.005
    assert H.saturation_index(y, tol=1.0) == 0
    assert H.saturation_index([0.0, 1.0, 0.0], tol=0.5) == 2  # left the band late: saturates at the end
    with pytest.raises(ValueError, match="non-negative"):
        H.saturation_index(y, tol=-1)
    with pytest.raises(ValueError, match="finite"):
        H.saturation_index([1.0, np.nan], tol=0.1)
