"""Q/K/V analysis tables of notebook 05: per-layer MDS of the query, key and value slices of
GPT-NeoX attention layers (groups ``qkv`` of :mod:`trajlib.groups`), and their spread by depth."""

from __future__ import annotations

import re

import pandas as pd

from ..hallmarks import mds, relative_mds


def qkv_table(stats: dict) -> pd.DataFrame:
    """Per-layer MDS of Q, K and V from ``{(label, seed): GramStats}`` holding ``qkv`` groups.

    Columns: label, seed, layer, depth (layer / (layers − 1)), part (q, k, v), mds, relative_mds.
    Notebook 05.
    """
    rows = []
    for (label, seed), st in stats.items():
        found = [(m, g) for g in st.groups if (m := re.fullmatch(r"(.*)\.(\d+)\.attention\.([qkv])", g))]
        if not found:
            raise ValueError(f"{label}: no qkv groups in these stats; compute them with groups=['qkv']")
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
