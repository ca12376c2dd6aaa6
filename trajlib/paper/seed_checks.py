"""Seed checks: the per-seed statements the test suite asserts on trained runs, with the margin
each was measured to have over many seeds.

A check turns a page's results JSON into one number per seed, its *margin*: positive when the
statement holds on that seed, in the statement's own units (MDS, accuracy, a fraction of
training). The suite asserts a check on the ci preset's few seeds only when
``python -m trajlib.paper margins`` measured it over ≥ 20 seeds at the same preset and found it
held on every one with the mean margin at least :data:`Z_MIN` standard deviations above zero
(``book/benchmarks/seed_margins.json``, rendered on the methods page). A verdict over two or
three seeds is never asserted: a t-interval over so few seeds straddles zero whenever the
effects differ a little, so the suite checks that each verdict recomputes from its page's
per-seed table instead (deterministic given those numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

Z_MIN = 3.0      # mean margin / its sd over seeds: a normal margin fails on about 1 seed in 740
MIN_SEEDS = 20   # seeds a check must have been measured on before the suite asserts it


def per_run(doc: dict, key: str = "per_run") -> pd.DataFrame:
    """A results JSON's per-run table (saved by index or as records) as a DataFrame."""
    table = doc["values"][key]
    return pd.DataFrame.from_dict(table, orient="index") if isinstance(table, dict) else pd.DataFrame(table)


def _pivot(doc: dict, value: str, key: str = "per_run", **where) -> pd.DataFrame:
    runs = per_run(doc, key)
    for column, wanted in where.items():
        runs = runs[runs[column] == wanted]
    out = runs.pivot_table(index="seed", columns="label", values=value, aggfunc="first").astype(float)
    out.columns = out.columns.map(str)
    return out


def _order_02(doc):
    mds = _pivot(doc, "mds")
    singles = mds[["momentum only", "wd only"]]
    return np.minimum(singles.min(axis=1) - mds["momentum + wd"], mds["neither"] - singles.max(axis=1))


def _falls_with(doc, sizes, value="mds", **where):
    """The smallest drop of ``value`` from each size to the next (positive: it falls every time)."""
    t = _pivot(doc, value, **where)
    cols = [str(s) for s in sizes]
    return pd.concat([t[a] - t[b] for a, b in zip(cols[:-1], cols[1:])], axis=1).min(axis=1)


def _batch_03(doc):
    return _falls_with(doc, doc["parameters"]["batch_sizes"])  # per_run: the page's own BatchNorm setting


def _batch_ends_03(doc):
    b = [str(x) for x in doc["parameters"]["batch_sizes"]]
    mds = _pivot(doc, "mds")
    return mds[b[0]] - mds[b[-1]]


def _width_04(group):
    return lambda doc: -_falls_with(doc, doc["parameters"]["widths"], group=group).rename(None)


def _rise_04(doc):
    w = [str(x) for x in doc["parameters"]["widths"]]
    t = _pivot(doc, "mds", group="all")
    return t[w[-1]] - t[w[0]]


def _freeze_07(doc):
    acc = _pivot(doc, "final_accuracy")
    return acc["full"] - acc[str(doc["parameters"]["freeze_epochs"][0])] - 0.05


def _late_freeze_07(doc):
    acc = _pivot(doc, "final_accuracy")
    k = [str(x) for x in doc["parameters"]["freeze_epochs"]]
    return (acc["full"] - acc[k[0]]) - (acc["full"] - acc[k[-1]]).abs()


def _learns_09(label, floor):
    return lambda doc: _pivot(doc, "final_accuracy")[label] - floor


def _dead_ends_09(doc):
    acc, mds = _pivot(doc, "final_accuracy"), _pivot(doc, "mds")
    parts = [m for dead in ("lr too small", "dead init")
             for m in (0.2 - acc[dead], mds[dead] - 0.99, mds[dead] - mds["healthy"])]
    return pd.concat(parts, axis=1).min(axis=1)


def _late_saturation_09(doc):
    return -_pivot(doc, "effect", key="saturation")["healthy"]  # effect = initial phase − saturation fraction


def _mechanism_06(doc):
    """The three simulated mechanism rows' per-seed effects, signed by the paper's direction; the
    smallest of the three (each a margin of an order the row states)."""
    p = doc["parameters"]
    sim = per_run(doc)
    sim = sim[sim["noise"] == p["noise"]]
    mds = sim.pivot(index="seed", columns="label", values="mds").astype(float)
    both, mom = f"μ={p['momentum']:g}, λ={p['weight_decay']:g}", f"μ={p['momentum']:g}, λ=0"
    wd, neither = f"μ=0, λ={p['weight_decay']:g}", "μ=0, λ=0"
    on = sim[sim["label"] == both].set_index("seed").astype({"checkpoint_update_cos": float, "step_cos": float})
    oscillates = np.minimum(-on["checkpoint_update_cos"], on["step_cos"])
    wd_adds = mds[mom] - mds[both]
    order = np.minimum(mds[[mom, wd]].min(axis=1) - mds[both], mds[neither] - mds[[mom, wd]].max(axis=1))
    return pd.concat([oscillates, wd_adds, order], axis=1).min(axis=1)


@dataclass(frozen=True)
class SeedCheck:
    """A statement about every seed of one page: ``margin(results) → pandas Series by seed``."""

    name: str
    notebook: str
    statement: str
    margin: Callable[[dict], pd.Series]


CHECKS = (
    SeedCheck("02-order", "02-momentum-weight-decay",
              "MDS: momentum + wd < each alone < neither", _order_02),
    SeedCheck("03-batch", "03-batch-size", "MDS falls at every step up in batch size", _batch_03),
    SeedCheck("03-ends", "03-batch-size", "MDS at the largest batch below MDS at the smallest", _batch_ends_03),
    SeedCheck("04-width-matrices", "04-scale", "weight-matrix MDS rises at every step up in width",
              _width_04("matrices")),
    SeedCheck("04-rise", "04-scale", "MDS (all parameters) of the widest model above the narrowest's", _rise_04),
    SeedCheck("06-mechanisms", "06-oscillation-theory",
              "each simulated mechanism row's per-seed effect on the paper's side", _mechanism_06),
    SeedCheck("07-freeze-at-init", "07-batchnorm-only",
              "freezing all but BatchNorm at initialisation costs more than 5 points", _freeze_07),
    SeedCheck("07-late-freeze", "07-batchnorm-only",
              "the latest freeze is closer to full training than the earliest", _late_freeze_07),
    SeedCheck("09-healthy-learns", "09-saturation-dead-ends", "the healthy CNN ends above 80 %",
              _learns_09("healthy", 0.8)),
    SeedCheck("09-vit-learns", "09-saturation-dead-ends", "the ViT ends above 50 %", _learns_09("ViT", 0.5)),
    SeedCheck("09-dead-ends", "09-saturation-dead-ends",
              "both dead ends end below 20 %, with MDS above 0.99 and above the healthy run's", _dead_ends_09),
    SeedCheck("09-late-saturation", "09-saturation-dead-ends",
              "the healthy CNN's prefix MDS settles only after the initial phase", _late_saturation_09),
)
BY_NAME = {c.name: c for c in CHECKS}


def summarise(margins: pd.Series) -> dict:
    """n, mean, sd, min of per-seed margins, how many held (> 0), and z = mean / sd."""
    x = np.asarray(margins, dtype=np.float64)
    x = x[np.isfinite(x)]
    sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return {"n": int(len(x)), "mean": float(x.mean()), "sd": sd, "min": float(x.min()),
            "held": int((x > 0).sum()), "z": float(x.mean() / sd) if sd and sd > 0 else math.inf}


def trusted(record: dict | None) -> bool:
    """Whether a measured record backs asserting its check on any seed: measured on ≥
    :data:`MIN_SEEDS` seeds, held on every one, mean margin ≥ :data:`Z_MIN` sd."""
    return bool(record) and record["n"] >= MIN_SEEDS and record["held"] == record["n"] and record["z"] >= Z_MIN


# What each page runs with when measured, beyond its seed count: 04's width family alone (its
# fixed-rate variants and MLP panel feed no check).
MEASURE_OVERRIDES = {"04-scale": {"fixed_lr_widths": []}}


def measure(notebooks: list[str] | None, *, seeds: int = MIN_SEEDS, work, echo=print) -> None:
    """Execute each page that has checks at the ci preset with ``seeds`` seeds, in the folder
    ``work`` (its runs and results JSON stay there: :func:`summaries` reads them)."""
    from pathlib import Path

    import papermill

    from .book import Layout, select

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    for name, source in select(Layout(), notebooks).items():
        if any(c.notebook == name for c in CHECKS):
            echo(f"{name}: {seeds} seeds ...")
            papermill.execute_notebook(str(source), str(work / source.name), cwd=str(work), kernel_name="python3",
                                       parameters={"seeds": seeds, **MEASURE_OVERRIDES.get(name, {})},
                                       progress_bar=False)


def summaries(work) -> dict:
    """{check name: notebook, statement, seeds measured and :func:`summarise`} for every check
    whose page has results in ``work``."""
    import json
    from pathlib import Path

    out = {}
    for c in CHECKS:
        path = Path(work) / "results" / f"{c.notebook}.json"
        if path.is_file():
            doc = json.loads(path.read_text())
            out[c.name] = {"notebook": c.notebook, "statement": c.statement, **summarise(c.margin(doc))}
    return out
