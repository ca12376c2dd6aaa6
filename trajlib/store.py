"""Trajectory: T checkpoints of one model, as rows of a small :class:`Checkpoint` dataclass.

A :class:`Trajectory` holds the ordered float tensors (names, shapes, dtypes checked equal across
checkpoints; errors name the file and tensor), the checkpoints sorted by integer step, and
``read`` for block-major streaming by the Gram engine (``trajlib.gram``). Opening one from a run
directory, a Hugging Face folder or the hub is :func:`trajlib.sources.open_trajectory`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .formats import FLOAT_CODES, ST_DTYPES, CheckpointReader, to_float64
from .manifest import TrajectoryError

log = logging.getLogger("trajlib.store")


@dataclass
class Checkpoint:
    """One checkpoint θ_t: its reader, integer step, epoch (NaN if unknown) and label.

    ``content_sha256``: sha256 of the tensor bytes in storage order (computed on demand when
    the source does not record it); ``file_sha256``: the whole file's hash where a manifest of
    format 1 recorded one (checked by :meth:`Trajectory.validate`)."""

    reader: CheckpointReader
    step: int
    epoch: float = float("nan")
    label: str = ""
    content_sha256: str | None = None
    file_sha256: str | None = None

    def content_hash(self) -> str:
        if self.content_sha256 is None:
            self.content_sha256 = self.reader.content_sha256()
        return self.content_sha256


class Trajectory:
    """T checkpoints θ_0..θ_{T-1} of one model, sorted by step.

    ``checkpoints``: :class:`Checkpoint` rows; ``names``: the float tensors in flattening order;
    ``kinds[name]``: "parameter" or "buffer"; ``groups``: named tensor lists recorded with the
    run (e.g. ``bn``); ``steps``: int64 (T,); ``epochs``: float64 (T,), NaN where unknown.
    """

    def __init__(self, checkpoints: Sequence[Checkpoint], *, names: Sequence[str] | None = None,
                 kinds: dict[str, str] | None = None, groups: dict[str, list[str]] | None = None,
                 meta: dict | None = None, source: str = ""):
        if len(checkpoints) == 0:
            raise TrajectoryError(f"{source}: no checkpoints")
        self.checkpoints = sorted(checkpoints, key=lambda c: c.step)
        for c in self.checkpoints:
            c.label = c.label or str(c.step)
        self.source, self.meta, self.groups = source, meta or {}, groups or {}
        first = self.checkpoints[0].reader
        self.names = [n for n in (names or first.names) if first.dtypes[n] in FLOAT_CODES]
        self.shapes = {n: first.shapes[n] for n in self.names}
        self.dtypes = {n: first.dtypes[n] for n in self.names}
        self.kinds = {n: (kinds or {}).get(n, "parameter") for n in self.names}
        self._check_consistent()

    # -- shape of the data -------------------------------------------------------------------
    @property
    def T(self) -> int:
        return len(self.checkpoints)

    @property
    def steps(self) -> np.ndarray:
        return np.array([c.step for c in self.checkpoints], dtype=np.int64)

    @property
    def epochs(self) -> np.ndarray:
        return np.array([c.epoch for c in self.checkpoints], dtype=np.float64)

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.checkpoints]

    @property
    def parameters(self) -> list[str]:
        """Names of the recorded parameters (buffers excluded), in flattening order."""
        return [n for n in self.names if self.kinds[n] == "parameter"]

    def numel(self, name: str) -> int:
        return int(np.prod(self.shapes[name], dtype=np.int64))

    @property
    def P(self) -> int:
        """Number of recorded parameters (buffers excluded)."""
        return sum(self.numel(n) for n in self.parameters)

    @property
    def nbytes(self) -> int:
        """Bytes of float tensor data over all T checkpoints."""
        return self.T * sum(self.numel(n) * ST_DTYPES[self.dtypes[n]].itemsize for n in self.names)

    def _check_consistent(self) -> None:
        ref = self.checkpoints[0].reader
        for c in self.checkpoints[1:]:
            reader = c.reader
            ours = [n for n in reader.names if reader.dtypes[n] in FLOAT_CODES]
            missing, extra = sorted(set(self.names) - set(ours)), sorted(set(ours) - set(self.names))
            if missing or extra:
                what = f"lacks tensor {missing[0]!r}" if missing else f"has extra tensor {extra[0]!r}"
                raise TrajectoryError(f"{reader.path}: {what} (tensor names differ from {ref.path})")
            for n in self.names:
                if reader.shapes[n] != self.shapes[n] or reader.dtypes[n] != self.dtypes[n]:
                    raise TrajectoryError(
                        f"{reader.file_of(n)}: tensor {n!r} is {reader.dtypes[n]}{list(reader.shapes[n])}, "
                        f"but {self.dtypes[n]}{list(self.shapes[n])} in {ref.file_of(n)}"
                    )

    # -- reading -----------------------------------------------------------------------------
    def read(self, t: int, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy flat elements [start, stop) of tensor ``name`` of checkpoint ``t`` into ``out``."""
        self.checkpoints[t].reader.read(name, start, stop, out)

    def tensor(self, t: int, name: str) -> np.ndarray:
        """One tensor of checkpoint ``t`` as float64, in its shape."""
        return to_float64(self.checkpoints[t].reader.tensor(name), self.dtypes[name])

    def flat(self, t: int, names: Iterable[str] | None = None) -> np.ndarray:
        """Checkpoint ``t`` flattened in manifest order, float64 (P,): for tests and small runs."""
        return np.concatenate([self.tensor(t, n).ravel() for n in (self.parameters if names is None else names)])

    def file_of(self, t: int, name: str) -> Path:
        return self.checkpoints[t].reader.file_of(name)

    # -- step level (runs recorded with step_stats= / sketch=) -------------------------------
    def steps_table(self):
        """The run's per-step statistics, a DataFrame with one row per (step, group)
        (:func:`trajlib.steps.read_step_table`)."""
        from .steps import read_step_table

        return read_step_table(self.source)

    def sketches(self):
        """The run's per-step sketches Φθ_t (:class:`trajlib.sketch.SketchedTrajectory`);
        ``trajlib.gram`` turns them into approximate GramStats."""
        from .sketch import read_sketches

        return read_sketches(self.source)

    # -- selection and duplicates ------------------------------------------------------------
    def select(self, indices: Sequence[int] | slice) -> "Trajectory":
        """A trajectory over a subset of checkpoints (indices into the step-sorted order)."""
        idx = list(range(self.T))[indices] if isinstance(indices, slice) else [int(i) for i in indices]
        if not idx:
            raise TrajectoryError(f"{self.source}: selection keeps no checkpoint")
        return Trajectory([dataclasses.replace(self.checkpoints[i]) for i in idx], names=self.names,
                          kinds=self.kinds, groups=self.groups, meta=self.meta, source=self.source)

    def duplicates(self) -> list[list[int]]:
        """Groups (≥ 2) of checkpoint indices whose weights are byte-identical."""
        by_hash = defaultdict(list)
        for t, c in enumerate(self.checkpoints):
            by_hash[c.content_hash()].append(t)
        return [ts for ts in by_hash.values() if len(ts) > 1]

    def drop_duplicates(self) -> tuple["Trajectory", list[str]]:
        """Keep the first checkpoint of each duplicate set; returns it and the dropped labels."""
        dups = self.duplicates()
        for ts in dups:
            log.warning("%s: checkpoints %s hold identical weights; keeping %s",
                        self.source, [self.checkpoints[t].label for t in ts], self.checkpoints[ts[0]].label)
        drop = {t for ts in dups for t in ts[1:]}
        keep = [t for t in range(self.T) if t not in drop]
        return self.select(keep), [self.checkpoints[t].label for t in sorted(drop)]

    # -- validation (trajlib.checks) ---------------------------------------------------------
    def find_nonfinite(self, names: Iterable[str] | None = None) -> tuple[int, str] | None:
        """(checkpoint index, tensor name) of the first NaN/Inf found, or None. Reads everything."""
        from .checks import find_nonfinite

        return find_nonfinite(self, names)

    def validate(self, *, hashes: bool = True, finite: bool = True) -> list[str]:
        """Findings a user should know about (duplicates, NaN/Inf, hash mismatches); [] if clean."""
        from .checks import validate

        return validate(self, hashes=hashes, finite=finite)

    def fingerprint(self) -> str:
        """A digest of what a Gram depends on: files, sizes, modification times, steps, tensors
        (never hashes computed lazily, so the digest does not change while the data does not)."""
        h = hashlib.sha256()
        for c in self.checkpoints:
            h.update(f"{c.reader.identity()}|{c.step}".encode())
        for n in self.names:
            h.update(f"{n}|{self.shapes[n]}|{self.dtypes[n]}|{self.kinds[n]}".encode())
        return h.hexdigest()

    def close(self) -> None:
        for c in self.checkpoints:
            c.reader.close()

    def __repr__(self) -> str:
        return (f"Trajectory({self.source!r}, T={self.T}, P={self.P:,}, tensors={len(self.names)}, "
                f"steps={self.steps[0]}..{self.steps[-1]})")
