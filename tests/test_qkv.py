"""Notebook 05's Q/K/V tables and maps, against direct computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from trajlib import hallmarks as H
from trajlib.paper.qkv import qkv_maps, qkv_table, spread_by_layer
from trajlib.stats import GramStats


def _stats(rng, layers=3, T=6, P=40) -> tuple[GramStats, dict]:
    X = {}
    for i in range(layers):
        for part in "qkv":
            X[f"gpt_neox.layers.{i}.attention.{part}"] = rng.normal(size=(T, P)) + rng.normal(size=P)
    grams = {g: H.gram_from_checkpoints(x) for g, x in X.items()}
    return GramStats(np.arange(T), np.full(T, np.nan), grams, {g: P for g in grams}), X


def _cos(X):
    n = np.linalg.norm(X, axis=1)
    return X @ X.T / np.outer(n, n)


def test_qkv_maps_are_the_direct_cosine_maps_in_layer_then_q_k_v_order():
    st, X = _stats(np.random.default_rng(0))
    maps = qkv_maps(st)
    assert [t.split("\n")[0] for t in maps] == [f"layer {i} · {p}" for i in range(3) for p in "QKV"]
    for (title, C), g in zip(maps.items(), X):
        np.testing.assert_allclose(C, _cos(X[g]), atol=1e-12)
        off = _cos(X[g])[~np.eye(len(C), dtype=bool)].mean()
        assert title.endswith(f"MDS {off:.3f}")
    assert [t.split("\n")[0] for t in qkv_maps(st, layers=[2])] == ["layer 2 · Q", "layer 2 · K", "layer 2 · V"]
    with pytest.raises(ValueError, match="no qkv groups"):
        qkv_maps(GramStats(st.steps, st.epochs, {"all": st.grams["gpt_neox.layers.0.attention.q"]}, {"all": 40}))


def test_spread_by_layer_is_the_t_interval_of_the_per_seed_spread():
    rng = np.random.default_rng(1)
    stats = {}
    for seed in range(4):
        stats[("small", seed)], _ = _stats(rng)
    qkv = qkv_table(stats)
    out = spread_by_layer(qkv)
    assert list(out["layer"]) == [0, 1, 2] and (out["n"] == 4).all()
    np.testing.assert_allclose(out["depth"], [0.0, 0.5, 1.0])
    for _, row in out.iterrows():
        spreads = []
        for seed in range(4):
            v = [H.mds(stats[("small", seed)][f"gpt_neox.layers.{row['layer']}.attention.{p}"]) for p in "qkv"]
            spreads.append(max(v) - min(v))
        half = sps.t.ppf(0.975, 3) * np.std(spreads, ddof=1) / 2
        assert row["mean"] == pytest.approx(np.mean(spreads), abs=1e-12)
        assert row["low"] == pytest.approx(np.mean(spreads) - half, abs=1e-12)
        assert row["high"] == pytest.approx(np.mean(spreads) + half, abs=1e-12)
    one = spread_by_layer(qkv[qkv["seed"] == 0])
    assert (one["n"] == 1).all() and one["low"].isna().all() and one["high"].isna().all()
    assert isinstance(one, pd.DataFrame)
