"""Several runs of one architecture in one Gram pass, and what compares them.

Several runs stack their rows (:mod:`trajlib.gram.rows`), each run starting again from its own
θ_0 at its offset: ``[θ_a(0); u_a…; θ_b(0); u_b…]``. So the joint Gram (ΣT × ΣT, exact float64,
the same block reads and groups as one run) holds each run's own Gram as a diagonal block and
the cross-run products off the diagonal; checkpoint products are ``L G Lᵀ``
(:func:`~trajlib.gram.rows.checkpoint_basis`).

Distances at matched steps are formed from the rows, not from ‖θ‖²: for runs whose θ_0 are
byte-identical (equal content sha256) ``θ_a(t) − θ_b(t) = Σ_{s<t} (u_a,s − u_b,s)``, whose
squared norm is a sum of update products only, so its rounding scales with the distance
travelled, not with ‖θ‖².
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .gram.rows import checkpoint_basis, run_starts, stacked_rows  # noqa: F401  (also trajlib.joint's, as before)
from .manifest import TrajectoryError
from .stats import GramStats
from .store import Trajectory


class JointTrajectory(Trajectory):
    """Several trajectories of one architecture (same tensors, shapes, dtypes), in run order:
    checkpoints of run 0 by step, then run 1's, ... ``starts``: each run's first row; ``runs``:
    the trajectories; ``names`` of the runs (default ``run0``, ``run1``, ...)."""

    def __init__(self, runs: Sequence[Trajectory], names: Sequence[str] | None = None):
        runs = list(runs)
        if len(runs) < 2:
            raise ValueError("a joint trajectory needs at least two runs")
        first = runs[0]
        for r in runs[1:]:
            if r.names != first.names or any(r.shapes[n] != first.shapes[n] or r.dtypes[n] != first.dtypes[n]
                                             for n in first.names):
                diff = next((n for n in first.names if n not in r.shapes or r.shapes[n] != first.shapes[n]
                             or r.dtypes[n] != first.dtypes[n]), None) or next(n for n in r.names if n not in first.shapes)
                raise TrajectoryError(f"{r.source}: tensor {diff!r} differs from {first.source} "
                                      f"(a joint map needs one architecture)")
        self.run_names = list(names) if names is not None else [f"run{i}" for i in range(len(runs))]
        if len(self.run_names) != len(runs):
            raise ValueError(f"{len(self.run_names)} names for {len(runs)} runs")
        checkpoints = [c for r in runs for c in r.checkpoints]
        super().__init__(checkpoints, names=first.names, kinds=first.kinds, groups=first.groups, meta=first.meta,
                         source=" + ".join(r.source for r in runs))
        self.checkpoints = checkpoints  # run order: the constructor sorted them by step
        self.runs = runs
        self.starts = run_starts([r.T for r in runs])

    def run_meta(self) -> list[dict]:
        """Each run's name, source, offset, T and the content sha256 of its θ_0."""
        return [{"name": n, "source": r.source, "offset": s, "T": r.T, "theta0_sha256": r.checkpoints[0].content_hash()}
                for n, r, s in zip(self.run_names, self.runs, self.starts)]

    def fingerprint(self) -> str:
        """The checkpoints' digest and the runs' names and offsets (a cached joint Gram keeps them)."""
        import hashlib

        return hashlib.sha256((super().fingerprint() + repr(list(zip(self.run_names, self.starts)))).encode()).hexdigest()


def joint(stats: GramStats) -> list[dict]:
    """The runs of a joint Gram (name, source, offset, T); raises for a one-run Gram."""
    runs = stats.meta.get("runs")
    if not runs:
        raise ValueError("these stats are of one run; pass several trajectories to trajlib.gram")
    return runs


def _index(stats: GramStats, run) -> dict:
    runs = joint(stats)
    if isinstance(run, str):
        found = [r for r in runs if r["name"] == run]
        if not found:
            raise KeyError(f"no run {run!r}; runs: {', '.join(r['name'] for r in runs)}")
        return found[0]
    return runs[run]


def run_stats(stats: GramStats, run) -> GramStats:
    """The GramStats of one run of a joint Gram (by name or index): its diagonal block, which is
    exactly what a pass over that run alone computes."""
    r = _index(stats, run)
    s = slice(r["offset"], r["offset"] + r["T"])
    meta = {k: v for k, v in stats.meta.items() if k != "runs"} | {"source": r["source"]}
    return GramStats(stats.steps[s].copy(), stats.epochs[s].copy(), {g: G[s, s].copy() for g, G in stats.grams.items()},
                     dict(stats.n_params), stats.labels[s] if stats.labels else [], meta)


def checkpoint_gram(stats: GramStats, group: str = "all") -> np.ndarray:
    """(ΣT, ΣT) inner products ⟨θ_i, θ_j⟩ of every checkpoint of every run."""
    starts = [r["offset"] for r in joint(stats)]
    L = checkpoint_basis(stats.T, starts)
    return L @ stats[group] @ L.T


def joint_map(stats: GramStats, group: str = "all") -> np.ndarray:
    """(ΣT, ΣT) cosine similarity of every checkpoint of every run with every other: each run's
    own trajectory map on the diagonal blocks, cross-run cosines off them."""
    K = checkpoint_gram(stats, group)
    n = np.sqrt(np.clip(np.diag(K), 0, None))
    return K / np.outer(n, n)


def cross_map(stats: GramStats, a, b, group: str = "all") -> np.ndarray:
    """(T_a, T_b) cos(θ_a(i), θ_b(j))."""
    ra, rb = _index(stats, a), _index(stats, b)
    C = joint_map(stats, group)
    return C[ra["offset"]: ra["offset"] + ra["T"], rb["offset"]: rb["offset"] + rb["T"]]


def matched_distances(stats: GramStats, a, b, group: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(steps, ‖θ_a(t) − θ_b(t)‖) at the steps both runs have, from the rows (see the module
    docstring: rounding relative to the distance travelled, not to ‖θ‖)."""
    ra, rb = _index(stats, a), _index(stats, b)
    sa, sb = stats.steps[ra["offset"]: ra["offset"] + ra["T"]], stats.steps[rb["offset"]: rb["offset"] + rb["T"]]
    common = np.intersect1d(sa, sb)
    G = stats[group]
    same_init = ra.get("theta0_sha256") is not None and ra.get("theta0_sha256") == rb.get("theta0_sha256")
    out = np.empty(len(common))
    for k, step in enumerate(common):
        c = np.zeros(stats.T)
        ia, ib = int(np.searchsorted(sa, step)), int(np.searchsorted(sb, step))
        c[ra["offset"]: ra["offset"] + ia + 1] += 1.0
        c[rb["offset"]: rb["offset"] + ib + 1] -= 1.0
        if same_init:  # θ_a(0) = θ_b(0) byte for byte: their difference is zero, leave its rows out
            c[ra["offset"]] = c[rb["offset"]] = 0.0
        rows = np.flatnonzero(c)
        out[k] = np.sqrt(max(float(c[rows] @ G[np.ix_(rows, rows)] @ c[rows]), 0.0))
    return common, out


def where_runs_part(stats: GramStats, a, b, *, band: float = 0.1, group: str = "all") -> int | None:
    """The first matched step at which runs ``a`` and ``b`` are further apart than ``band`` times
    the distance run ``a`` has travelled from its θ_0 (‖θ_a(t) − θ_b(t)‖ > band · ‖θ_a(t) − θ_a(0)‖);
    None if they never leave the band."""
    steps, d = matched_distances(stats, a, b, group)
    ra = _index(stats, a)
    o, G = ra["offset"], stats[group]
    sa = stats.steps[o: o + ra["T"]]
    for step, dist in zip(steps, d):
        i = o + int(np.searchsorted(sa, step))
        travel = np.sqrt(max(float(G[o + 1: i + 1, o + 1: i + 1].sum()), 0.0))  # ‖Σ u‖ from the rows
        if step > sa[0] and dist > band * travel:
            return int(step)
    return None
