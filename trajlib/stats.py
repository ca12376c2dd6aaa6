"""GramStats: the small result of one pass over a trajectory, saved as ``.npz`` beside the run.

For each parameter group it holds G (T, T), float64: the Gram of the rows
``[θ_0; u_0; u_1; ...; u_{T-2}]`` with u_t = θ_{t+1} − θ_t formed from each streamed slice
before any product (:mod:`trajlib.gram.rows`). Every hallmark follows from G by additions alone
(``trajlib.hallmarks``): no update or displacement quantity is ever obtained by subtracting
Gram entries. Re-plotting never re-reads checkpoints.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .manifest import atomic_write


@dataclass
class GramStats:
    """Per-group Grams of [θ_0; u_0..u_{T-2}] for one trajectory.

    ``steps``: int64 (T,); ``epochs``: float64 (T,), NaN where unknown; ``grams[group]``:
    float64 (T, T); ``n_params[group]``: elements in the group; ``meta``: how it was computed.
    """

    steps: np.ndarray
    epochs: np.ndarray
    grams: dict[str, np.ndarray]
    n_params: dict[str, int]
    labels: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.steps)

    @property
    def groups(self) -> list[str]:
        return list(self.grams)

    def __getitem__(self, group: str) -> np.ndarray:
        try:
            return self.grams[group]
        except KeyError:
            raise KeyError(f"no group {group!r} in these stats; groups: {', '.join(self.grams)}") from None

    def select(self, indices) -> "GramStats":
        """Stats of a sub-trajectory θ_{i_0}, θ_{i_1}, ... (sorted indices), without re-reading.

        Uses u_{i→j} = Σ_{i≤s<j} u_s, i.e. sums of Gram entries (no cancellation).
        """
        if self.meta.get("runs"):
            raise ValueError("these are the stats of several runs: cut one out with trajlib.joint.run_stats first")
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or len(idx) < 1 or np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= self.T:
            raise ValueError(f"indices must be increasing within 0..{self.T - 1}, got {indices!r}")
        from .gram.rows import selection_basis

        M = selection_basis(self.T, idx)
        grams = {g: M @ G @ M.T for g, G in self.grams.items()}
        return GramStats(self.steps[idx], self.epochs[idx], grams, dict(self.n_params),
                         [self.labels[i] for i in idx] if self.labels else [], dict(self.meta))

    def save(self, path: str | Path) -> Path:
        """Write the stats as ``.npz`` atomically (readers see the old file or the new one)."""
        path = Path(path)
        names = list(self.grams)
        buf = io.BytesIO()
        np.savez(buf, steps=self.steps, epochs=self.epochs,
                 grams=np.stack([self.grams[g] for g in names]),
                 n_params=np.array([self.n_params[g] for g in names], dtype=np.int64),
                 groups=np.array(names), labels=np.array(self.labels),
                 meta=np.array(json.dumps(self.meta)))
        atomic_write(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GramStats":
        with np.load(path, allow_pickle=False) as z:
            names = [str(g) for g in z["groups"]]
            return cls(steps=z["steps"], epochs=z["epochs"],
                       grams={g: z["grams"][i] for i, g in enumerate(names)},
                       n_params={g: int(n) for g, n in zip(names, z["n_params"])},
                       labels=[str(x) for x in z["labels"]], meta=json.loads(str(z["meta"])))
