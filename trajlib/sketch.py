"""Sketched dense-in-time trajectories: a fixed random linear sketch Φθ_t ∈ R^k of every step.

:class:`CountSketch` is the sketch: Φx = Σ_i s(i) x_i e_{h(i)} with bucket h(i) ∈ [0, k) and
sign s(i) = ±1 derived from the parameter's global index i (manifest order of the recorded
tensors) by a seeded splitmix64 hash, so the same (seed, k) gives the same Φ on any device and
in any process, and a group's sketch is Φ restricted to its parameters. It is linear, so the
sketches of [θ_0; u_0; ...] are the rows [Φθ_0; Φθ_1 − Φθ_0; ...] and the Gram engine's basis
and every hallmark carry over unchanged (:func:`sketch_gram`).

Error: ⟨Φx, Φy⟩ is unbiased for ⟨x, y⟩ with variance ≤ (‖x‖²‖y‖² + ⟨x, y⟩²)/k, so each
cosine of a sketched map is off by a random error of standard deviation ≤ sqrt(2/k) (for a
cosine c near ±1, much less: about (1 − c²)/sqrt(k)). tests/test_sketch.py checks it against
exact maps; book/methods.md states it with the measured errors.

Memory: the sketch is computed block by block from the live parameters (no copy of θ). With
``cache_hash=True`` (the default on the CPU) the signed buckets of every parameter are kept as
int64 (8 bytes per parameter, computed once; ``scatter_add_`` wants int64 and is the fastest
CPU path measured); with ``False`` (the default on CUDA) they are hashed
again at every sketched step (about a dozen integer passes over each block, fast on a GPU) and
the only memory is one block of work space: the 1e9-parameter case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .manifest import TrajectoryError, read_manifest
from .rows import read_rows
from .stats import GramStats

DEFAULT_K = 1024
SKETCH_FILE = "sketch.f64"
_M30, _M27, _M31 = (1 << 34) - 1, (1 << 37) - 1, (1 << 33) - 1  # masks making >> logical on int64
_C1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_C2 = 0x94D049BB133111EB - (1 << 64)


def _splitmix(i: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64 finaliser of ``i`` + a seed-derived offset, int64 with wrap-around."""
    z = i + ((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 63))
    z = (z ^ ((z >> 30) & _M30)) * _C1
    z = (z ^ ((z >> 27) & _M27)) * _C2
    return z ^ ((z >> 31) & _M31)


class CountSketch:
    """Φ: R^P → R^k, fixed by (``k``, ``seed``); see the module docstring for error and memory.

    :meth:`index` gives the signed buckets of global indices (bucket + k for a negative sign):
    a block is sketched by one ``scatter_add_`` into a (2k,) accumulator, folded at the end.
    """

    kind = "countsketch-splitmix64"

    def __init__(self, k: int = DEFAULT_K, *, seed: int = 0):
        if int(k) < 2:
            raise ValueError(f"sketch dimension k={k}: must be at least 2")
        if int(seed) < 0:
            raise ValueError(f"sketch seed={seed}: must be non-negative")
        self.k, self.seed = int(k), int(seed)

    def index(self, gidx: torch.Tensor) -> torch.Tensor:
        """Signed buckets (bucket + k·[sign < 0]) of int64 global indices, same shape, int64."""
        z = _splitmix(gidx.to(torch.int64), self.seed)
        bucket = (z & 0x7FFFFFFF) % self.k
        return bucket + self.k * ((z >> 40) & 1)

    def fold(self, acc: torch.Tensor) -> torch.Tensor:
        """(…, 2k) accumulator → (…, k) sketch (positive minus negative buckets)."""
        return acc[..., : self.k] - acc[..., self.k:]

    def apply(self, x: torch.Tensor | np.ndarray, *, offset: int = 0) -> np.ndarray:
        """Φx of a flat vector whose element j has global index ``offset`` + j; float64 (k,).
        The reference for tests and for trajectories already in memory."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        acc = torch.zeros(2 * self.k, dtype=torch.float64)
        acc.index_add_(0, self.index(torch.arange(offset, offset + len(x))), x)
        return self.fold(acc).numpy()

    def manifest_entry(self, *, every: int, groups: dict[str, int]) -> dict:
        return {"kind": self.kind, "k": self.k, "seed": self.seed, "every": every, "groups": groups,
                "file": SKETCH_FILE}


@dataclass
class SketchedTrajectory:
    """Sketches Φθ_t of a run at T steps: ``sketches[group]`` float64 (T, k), ``steps`` int64 (T,).

    :func:`trajlib.gram` accepts it and returns approximate GramStats (``meta["approximate"]``)."""

    steps: np.ndarray
    sketches: dict[str, np.ndarray]
    n_params: dict[str, int]
    meta: dict = field(default_factory=dict)
    source: str = ""

    @property
    def T(self) -> int:
        return len(self.steps)

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    def select(self, indices) -> "SketchedTrajectory":
        """The sketches at a subset of the T steps (indices into the step order)."""
        idx = np.arange(self.T)[indices]
        return SketchedTrajectory(self.steps[idx], {g: s[idx] for g, s in self.sketches.items()},
                                  dict(self.n_params), dict(self.meta), self.source)

    def __repr__(self) -> str:
        return (f"SketchedTrajectory({self.source!r}, T={self.T}, k={self.k}, groups={list(self.sketches)}, "
                f"steps={self.steps[0] if self.T else None}..{self.steps[-1] if self.T else None})")


def read_sketches(run_dir: str | Path) -> SketchedTrajectory:
    """The sketches a Recorder stored beside ``run_dir`` (``Recorder(..., sketch=k)``)."""
    run_dir = Path(run_dir)
    entry = read_manifest(run_dir).get("sketch")
    if not entry:
        raise TrajectoryError(f"{run_dir}: the run recorded no sketches (pass sketch= to the Recorder)")
    groups, k = entry["groups"], int(entry["k"])
    rows = read_rows(run_dir / entry["file"], 1 + k * len(groups))
    if not len(rows):
        raise TrajectoryError(f"{run_dir / entry['file']}: no sketch rows yet")
    sketches = {g: rows[:, 1 + i * k: 1 + (i + 1) * k] for i, g in enumerate(groups)}
    return SketchedTrajectory(rows[:, 0].astype(np.int64), sketches, {g: int(n) for g, n in groups.items()},
                              dict(entry), str(run_dir))


def sketch_gram(sk, *, groups=None) -> GramStats:
    """Approximate GramStats of a sketched trajectory: per group G̃ = R̃ R̃ᵀ with
    R̃ = [Φθ_0; Φθ_1 − Φθ_0; ...] (T, k) in float64, the engine's basis [θ_0; u_0..].
    ``sk`` may be a list of sketched runs with one sketch (same k, seed, parameters): their joint
    Gram, each run's rows from its own θ_0 (:mod:`trajlib.gram.rows`)."""
    from .gram.rows import stacked_rows

    if isinstance(sk, (list, tuple)):
        return _joint_sketch_gram(list(sk), groups=groups)
    names = list(sk.sketches) if groups is None else ([groups] if isinstance(groups, str) else list(groups))
    missing = [g for g in names if g not in sk.sketches]
    if missing:
        raise ValueError(f"{sk.source}: group {missing[0]!r} was not sketched; sketched groups: "
                         f"{', '.join(sk.sketches)}")
    if sk.T < 2:
        raise ValueError(f"{sk.source}: a sketched trajectory needs at least 2 steps, has {sk.T}")
    grams = {}
    for g in names:
        R = stacked_rows(sk.sketches[g])
        grams[g] = R @ R.T
    meta = {"approximate": True, "sketch": {k: sk.meta[k] for k in ("kind", "k", "seed") if k in sk.meta},
            "error_std_bound": float(np.sqrt(2.0 / sk.k)), "source": sk.source}
    return GramStats(sk.steps.copy(), np.full(sk.T, np.nan), grams, {g: sk.n_params[g] for g in names},
                     [str(s) for s in sk.steps], meta)


def _joint_sketch_gram(runs: list, *, groups=None) -> GramStats:
    from .gram.rows import run_starts, stacked_rows

    first = runs[0]
    same = ("kind", "k", "seed")
    for r in runs[1:]:
        if any(r.meta.get(k) != first.meta.get(k) for k in same) or r.n_params != first.n_params:
            raise ValueError(f"{r.source}: sketched with {[r.meta.get(k) for k in same]} over {r.n_params}, "
                             f"{first.source} with {[first.meta.get(k) for k in same]} over {first.n_params}: "
                             f"a joint sketch Gram needs one sketch")
    one = [sketch_gram(r, groups=groups) for r in runs]  # validates each run and its groups
    starts = run_starts([r.T for r in runs])
    grams = {}
    for g in one[0].grams:
        R = stacked_rows(np.concatenate([np.asarray(r.sketches[g], np.float64) for r in runs]), starts)
        grams[g] = R @ R.T
    meta = dict(one[0].meta) | {"source": " + ".join(r.source for r in runs),
                                "runs": [{"name": f"run{i}", "source": r.source, "offset": s, "T": r.T}
                                         for i, (r, s) in enumerate(zip(runs, starts))]}
    return GramStats(np.concatenate([r.steps for r in runs]), np.full(sum(r.T for r in runs), np.nan), grams,
                     dict(one[0].n_params), [lab for o in one for lab in o.labels], meta)
