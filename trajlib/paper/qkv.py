"""Q/K/V analysis tables of notebook 05: per-layer MDS of the query, key and value slices of
GPT-NeoX attention layers (groups ``qkv`` of :mod:`trajlib.groups`), their spread by depth with
its interval over seeds, and the per-layer Q/K/V trajectory maps."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..hallmarks import mds, relative_mds, trajectory_map
from .verdict import t_interval

QKV_GROUP = re.compile(r"(.*)\.(\d+)\.attention\.([qkv])")


def _qkv_groups(st, label) -> list[tuple[re.Match, str]]:
    found = [(m, g) for g in st.groups if (m := QKV_GROUP.fullmatch(g))]
    if not found:
        raise ValueError(f"{label}: no qkv groups in these stats; compute them with groups=['qkv']")
    return found


def qkv_table(stats: dict) -> pd.DataFrame:
    """Per-layer MDS of Q, K and V from ``{(label, seed): GramStats}`` holding ``qkv`` groups.

    Columns: label, seed, layer, depth (layer / (layers − 1)), part (q, k, v), mds, relative_mds.
    Notebook 05.
    """
    rows = []
    for (label, seed), st in stats.items():
        found = _qkv_groups(st, label)
        n_layers = 1 + max(int(m.group(2)) for m, _ in found)
        for m, g in found:
            layer = int(m.group(2))
            rows.append({"label": label, "seed": seed, "layer": layer,
                         "depth": layer / max(1, n_layers - 1), "part": m.group(3),
                         "mds": mds(st[g]), "relative_mds": relative_mds(st[g])})
    return pd.DataFrame(rows).sort_values(["label", "seed", "layer", "part"], kind="stable").reset_index(drop=True)


def qkv_spread(qkv: pd.DataFrame) -> pd.DataFrame:
    """Per label: the spread max − min of the seed-mean Q/K/V MDS of each layer, averaged over
    all layers, the middle third of depths (1/3 ≤ depth ≤ 2/3) and the outer layers; and the
    part furthest from the other two most often."""
    mean = qkv.groupby(["label", "layer", "depth", "part"], sort=False)["mds"].mean().unstack("part")
    spread = (mean.max(axis=1) - mean.min(axis=1)).rename("spread").reset_index()
    far = (mean.sub(mean.median(axis=1), axis=0)).abs().idxmax(axis=1).rename("furthest").reset_index()
    rows = []
    for label, g in spread.groupby("label", sort=False):
        middle = g["depth"].between(1 / 3 - 1e-9, 2 / 3 + 1e-9)
        f = far[far["label"] == label]["furthest"].mode()
        rows.append({"label": label, "all_layers": g["spread"].mean(),
                     "middle": g.loc[middle, "spread"].mean() if middle.any() else float("nan"),
                     "outer": g.loc[~middle, "spread"].mean() if (~middle).any() else float("nan"),
                     "furthest": f.iloc[0].upper() if len(f) else ""})
    return pd.DataFrame(rows)


def spread_by_layer(qkv: pd.DataFrame) -> pd.DataFrame:
    """Per label and layer: the spread max − min of the Q, K and V MDS of each seed, its mean over
    seeds and 95 % t-interval (:func:`trajlib.paper.verdict.t_interval`; NaN bounds with one seed).

    Columns: label, layer, depth, mean, low, high, n. Notebook 05.
    """
    per_seed = qkv.pivot_table(index=["label", "seed", "layer", "depth"], columns="part", values="mds",
                               sort=False)
    spread = (per_seed.max(axis=1) - per_seed.min(axis=1)).rename("spread").reset_index()
    rows = []
    for (label, layer, depth), g in spread.groupby(["label", "layer", "depth"], sort=False):
        mean, low, high = t_interval(g["spread"].to_numpy())
        rows.append({"label": label, "layer": layer, "depth": depth, "mean": mean, "low": low, "high": high,
                     "n": int(np.isfinite(g["spread"]).sum())})
    return pd.DataFrame(rows).sort_values(["label", "layer"], kind="stable").reset_index(drop=True)


def qkv_maps(st, *, layers=None) -> dict[str, np.ndarray]:
    """Trajectory maps of the Q, K and V slices of each attention layer of one run, in the order
    layer 0 Q, K, V, layer 1 Q, ...: {"layer i · Q\\nMDS m": (T, T) map}, ready for
    :func:`trajlib.plot.map_grid` with ``ncols=3``. ``layers``: which layers (all by default).
    Notebook 05."""
    found = sorted(((int(m.group(2)), "qkv".index(m.group(3)), g) for m, g in _qkv_groups(st, "stats")))
    keep = None if layers is None else {int(x) for x in layers}
    return {f"layer {layer} · {g[-1].upper()}\nMDS {mds(st[g]):.3f}": trajectory_map(st[g])
            for layer, _, g in found if keep is None or layer in keep}
