"""Saturation of directionality, dead ends and the ViT beside the CNN (notebook 09).

* :func:`saturation_table`: per run, when the MDS of the growing prefix θ_0..θ_k stops changing
  (:func:`trajlib.hallmarks.prefix_mds`, :func:`~trajlib.hallmarks.saturation_index`), as a
  fraction of training, within a band relative to 1 − MDS (or absolute); the ICLR abstract (I) says directionality saturates by the initial phase.
* :func:`dead_end_grid`: a healthy run beside runs that stall (the arXiv v1 subtitle's "dead
  ends", A1): a learning rate far too small, and every BatchNorm scale initialised at 0.
* :func:`run_profiles`: distance from θ_0 and step norms of every run, one row per checkpoint.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import hallmarks as H


def dead_end_grid(*, model_kwargs: dict, small_lr: float, bn_init: float = 0.0,
                  vit: str | None = None, vit_kwargs: dict | None = None) -> dict[str, dict]:
    """Label → overrides of :func:`~trajlib.paper.runs.sweep`'s common settings: ``healthy`` (the
    common settings), ``lr too small`` (``lr=small_lr``), ``dead init`` (every BatchNorm scale at
    ``bn_init``) and, with ``vit``, ``ViT`` (that model under the healthy run's schedule)."""
    grid = {"healthy": {}, "lr too small": dict(lr=small_lr),
            "dead init": dict(model_kwargs={**model_kwargs, "bn_init": bn_init})}
    if vit is not None:
        grid["ViT"] = dict(model=vit, model_kwargs=vit_kwargs or {})
    return grid


def saturation_table(run_stats: dict, *, tol: float, relative: bool = True, initial_phase: float = 0.5,
                     group: str = "all") -> pd.DataFrame:
    """One row per run (``run_stats``: (label, seed) → GramStats) with the prefix MDS's saturation.

    ``saturation_step``: the step of the first checkpoint θ_k after which the prefix MDS stays
    within a band of the full trajectory's MDS: ``tol`` × (1 − MDS) when ``relative`` (a fraction
    of the way left to a perfectly directional trajectory, so runs whose MDS sits at different
    levels are held to the same standard), else ``tol`` in MDS units. ``saturation_fraction``:
    that step over the last step; ``effect``: ``initial_phase`` − fraction (positive: it saturates
    within the initial phase, the paper's direction); ``gap``: |prefix MDS at ``initial_phase`` −
    full MDS|; ``band``: the band's half-width; ``min_prefix_mds`` and ``min_fraction``: the
    curve's minimum and where it falls.
    """
    rows = []
    for (label, seed), stats in run_stats.items():
        curve = H.prefix_mds(stats[group])  # (T-1,): prefixes ending at checkpoints 1..T-1
        steps = np.asarray(stats.steps, dtype=np.float64)
        frac = (steps[1:] - steps[0]) / (steps[-1] - steps[0])
        band = tol * (1.0 - curve[-1]) if relative else tol
        k = H.saturation_index(curve, tol=band)
        at_phase = curve[min(np.searchsorted(frac, initial_phase), len(curve) - 1)]
        rows.append({"label": label, "seed": seed, "mds": float(curve[-1]), "min_prefix_mds": float(curve.min()),
                     "min_fraction": float(frac[np.argmin(curve)]),
                     "saturation_step": int(steps[k + 1]), "saturation_fraction": float(frac[k]),
                     "effect": float(initial_phase - frac[k]), "gap": float(abs(at_phase - curve[-1])),
                     "band": float(band)})
    return pd.DataFrame(rows)


def run_profiles(run_stats: dict, *, group: str = "all") -> pd.DataFrame:
    """Per checkpoint of every run: label, seed, step, fraction of training, distance from θ_0,
    norm of the update leaving it (NaN at the last), from :func:`trajlib.hallmarks.per_checkpoint`."""
    frames = []
    for (label, seed), stats in run_stats.items():
        t = H.per_checkpoint(stats, group)[["step", "distance_from_init", "step_norm"]]
        steps = t["step"].to_numpy(dtype=np.float64)
        frames.append(t.assign(label=label, seed=seed, fraction=(steps - steps[0]) / (steps[-1] - steps[0])))
    return pd.concat(frames, ignore_index=True)
