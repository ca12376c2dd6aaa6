"""Append-only tables of fixed-width float64 rows beside a run (step statistics, sketches).

A row table is one binary file of little-endian float64 records of ``width`` values, the
first of which is the integer step (exact in float64 below 2^53). Rows are appended with one
``write`` per group of rows; the table is readable at any time, and a record torn by a killed
process (a partial trailing record) is ignored on read and cut off when a writer reopens the
file. Steps are strictly increasing; a resumed run first drops the rows it will redo
(:meth:`RowFile.truncate_from`). The column names live in the run's manifest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .manifest import TrajectoryError

log = logging.getLogger("trajlib.rows")


def read_rows(path: str | Path, width: int) -> np.ndarray:
    """All complete rows of the table at ``path``, float64 (n, width); (0, width) if absent.

    Raises naming the file when its steps do not increase."""
    path = Path(path)
    if width < 1:
        raise ValueError(f"{path}: row width {width} must be positive")
    if not path.is_file():
        return np.zeros((0, width))
    data = np.fromfile(path, dtype="<f8")
    n = len(data) // width
    rows = data[: n * width].reshape(n, width)
    if n > 1 and not np.all(np.diff(rows[:, 0]) > 0):
        bad = int(np.argmin(np.diff(rows[:, 0]) > 0)) + 1
        raise TrajectoryError(f"{path}: row {bad} has step {rows[bad, 0]:.0f}, not after {rows[bad - 1, 0]:.0f}")
    return rows


class RowFile:
    """Writer of one row table; ``fsync`` syncs after each append (durable against a machine
    crash, not only a killed process)."""

    def __init__(self, path: str | Path, width: int, *, fsync: bool = False):
        self.path, self.width, self.fsync = Path(path), int(width), fsync
        self._record = 8 * self.width
        size = self.path.stat().st_size if self.path.is_file() else 0
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        if size % self._record:  # a torn tail left by a killed process
            log.warning("%s: dropping a partial row (%d bytes) left by a killed writer", self.path, size % self._record)
            os.ftruncate(self._fd, size - size % self._record)
        self._size = size - size % self._record
        last = read_rows(self.path, self.width)[-1:, 0]
        self.last_step = int(last[0]) if len(last) else None

    def truncate_from(self, step: int) -> int:
        """Drop the rows with step ≥ ``step`` (a resumed run redoes them); returns how many."""
        rows = read_rows(self.path, self.width)
        keep = int(np.searchsorted(rows[:, 0], step, side="left"))
        dropped = len(rows) - keep
        if dropped:
            os.ftruncate(self._fd, keep * self._record)
            self._size = keep * self._record
            log.warning("%s: dropped %d row(s) from step %d on (the resumed run records them again)",
                        self.path, dropped, step)
        self.last_step = int(rows[keep - 1, 0]) if keep else None
        return dropped

    def append(self, rows: np.ndarray) -> None:
        """Append rows (n, width) whose steps increase past the last row's."""
        rows = np.ascontiguousarray(rows, dtype="<f8")
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"{self.path}: rows of shape {rows.shape}, expected (n, {self.width})")
        if not len(rows):
            return
        first = int(rows[0, 0])
        if self.last_step is not None and first <= self.last_step:
            raise ValueError(f"{self.path}: step {first} is not after the last row's step {self.last_step}")
        data = rows.tobytes()
        written = os.pwrite(self._fd, data, self._size)
        if written != len(data):
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        self._size += len(data)
        self.last_step = int(rows[-1, 0])
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
