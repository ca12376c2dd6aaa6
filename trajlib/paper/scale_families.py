"""Width families of MLPs on digits under several initialisations, depths and parametrisations
(page 11: does scale regularise direction, or does the standard parametrisation?).

Each family is one :func:`~trajlib.paper.runs.sweep` over widths with page 04's MLP recipe (SGD,
momentum, weight decay, cosine schedule); only the model's keyword arguments differ. The base
family *is* page 04's vision panel (same run name and configs, so its finished runs are reused).
Under the standard parametrisation a wider network's updates shrink relative to its
initialisation; under μP (:class:`~trajlib.paper.models.MLP` with ``parametrisation="mup"``) they
do not, which separates "scale aligns the trajectory" from "the parametrisation freezes it".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..hallmarks import per_checkpoint
from .runs import Sweep, sweep

BASE = "standard · PyTorch init · depth 2"


def families(*, deep: int, base_width: int) -> dict[str, tuple[str, dict]]:
    """label → (run name, extra MLP keyword arguments) of the five families."""
    return {
        BASE: ("04-scale-mlp", {}),
        "standard · He init · depth 2": ("11-scale", {"init": "he"}),
        "standard · Glorot init · depth 2": ("11-scale", {"init": "glorot"}),
        f"standard · PyTorch init · depth {deep}": ("11-scale", {"depth": deep}),
        "μP · PyTorch init · depth 2": ("11-scale", {"parametrisation": "mup", "base_width": base_width}),
    }


def width_families(runs_dir, *, widths, seeds, deep: int, base_width: int, **common) -> dict[str, Sweep]:
    """Train (or reuse) every family at every width and seed; ``common``: the recipe
    (:func:`~trajlib.paper.runs.run_classification` keyword arguments, model ``mlp``)."""
    out = {}
    for label, (name, extra) in families(deep=deep, base_width=base_width).items():
        configs = {w: dict(model_kwargs={"width": w, **extra}) for w in widths}
        out[label] = sweep(runs_dir, name=name, configs=configs, seeds=seeds, model="mlp", **common)
    return out


def travel(stats, group: str = "all") -> float:
    """‖θ_{T−1} − θ_0‖ / ‖θ_0‖: how far training moved relative to the initialisation (exact,
    from the Gram's update block)."""
    pc = per_checkpoint(stats, group)
    return float(pc["distance_from_init"].iloc[-1] / pc["param_norm"].iloc[0])


def family_table(fams: dict[str, Sweep]) -> pd.DataFrame:
    """One row per (family, width, seed): MDS, relative MDS, travel, final accuracy."""
    rows = []
    for label, s in fams.items():
        for _, r in s.table.iterrows():
            rows.append({"family": label, "width": int(r["label"]), "seed": int(r["seed"]), "mds": r["mds"],
                         "relative_mds": r["relative_mds"], "final_accuracy": r["final_accuracy"],
                         "travel": travel(s.run_stats[(r["label"], r["seed"])])})
    return pd.DataFrame(rows)


def width_rise(table: pd.DataFrame, family: str, column: str = "mds") -> pd.Series:
    """Per seed, ``column`` at the widest width minus at the narrowest, within one family."""
    t = table[table["family"] == family].pivot(index="seed", columns="width", values=column)
    widths = sorted(t.columns)
    return (t[widths[-1]] - t[widths[0]]).astype(np.float64)
