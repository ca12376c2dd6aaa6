"""A claim's verdict with its uncertainty: an effect over seeds, its 95 % interval, and one of
*agrees*, *disagrees* or *inconclusive*.

The effect of a claim is a number per seed whose sign is the claim's direction (for example the
paired difference MDS(no momentum, no weight decay) − MDS(both), seed by seed). Over n seeds the
interval is Student's t: mean ± t(0.975, n − 1) · sd / √n. The verdict *agrees* when the whole
interval lies on the paper's side of zero, *disagrees* when it lies on the other side, and
*inconclusive* otherwise, including with a single seed (no interval can be formed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

VERDICTS = ("agrees", "disagrees", "inconclusive")


@dataclass
class Effect:
    """``mean`` of ``n`` per-seed effects and its 95 % t-interval [``low``, ``high``] (NaN when
    n < 2); ``verdict`` against the paper's ``direction`` (+1: the paper says positive)."""

    mean: float
    low: float
    high: float
    n: int
    direction: int
    verdict: str

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def t_interval(values: Sequence[float], *, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of ``values`` (NaN bounds if n < 2)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def judge(effects: Sequence[float], *, direction: int) -> Effect:
    """The verdict of per-seed ``effects`` against the paper's ``direction`` (+1 or −1)."""
    mean, low, high = t_interval(effects)
    n = int(np.isfinite(np.asarray(effects, dtype=np.float64)).sum())
    return judge_interval(mean, low, high, n=n, direction=direction)


def judge_interval(estimate: float, low: float, high: float, *, n: int, direction: int) -> Effect:
    """The verdict of an effect whose 95 % interval [``low``, ``high``] was formed another way
    (a bootstrap over runs, say), by the same rule as :func:`judge`; NaN bounds: inconclusive."""
    if direction not in (1, -1):
        raise ValueError(f"direction={direction!r}: expected +1 (the paper says the effect is positive) or -1")
    mean, low, high = float(estimate), float(low), float(high)
    if not low <= mean <= high and not (math.isnan(low) or math.isnan(high)):
        raise ValueError(f"estimate {mean} lies outside its interval [{low}, {high}]")
    if math.isnan(low) or math.isnan(high):
        verdict = "inconclusive"
    elif low > 0 or high < 0:
        verdict = "agrees" if (low > 0) == (direction > 0) else "disagrees"
    else:
        verdict = "inconclusive"
    return Effect(mean, low, high, n, direction, verdict)


def paired_difference(values: dict, low, high):
    """Per-seed effects ``values[(high, seed)] − values[(low, seed)]`` for the seeds both labels
    have, from {(label, seed): number}; a pandas Series indexed by seed."""
    import pandas as pd

    seeds = sorted({s for (label, s) in values if label == low} & {s for (label, s) in values if label == high})
    return pd.Series([values[(high, s)] - values[(low, s)] for s in seeds], index=seeds, dtype=float)
