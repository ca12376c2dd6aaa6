"""The rows every Gram in trajlib is of, and where each run's rows begin.

One run of checkpoints θ_0..θ_{T−1} has the rows R = [θ_0; u_0; …; u_{T−2}] with
u_t = θ_{t+1} − θ_t formed in float64 from each slice before any product; G = R Rᵀ. Several runs
of one architecture stack their rows, each run again from its own θ_0: the row at each run's
start (:func:`run_starts`) is that run's θ_0, every other row the difference of consecutive
checkpoints of its run. Every Gram path forms these rows: the streamed engine on CPU and CUDA
(:func:`form_rows`), the fused Triton kernel (on chip, the same differences; one run only), the
live Gram of the integrations, sketched Grams and tests (:func:`stacked_rows`). Every quantity then follows
from G by additions: checkpoints are sums of rows (:func:`checkpoint_basis`), and so are the
rows of a sub-trajectory (:func:`selection_basis`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def run_starts(lengths: Sequence[int]) -> list[int]:
    """Row offsets of each run's θ_0 in the stacked rows of runs of these lengths."""
    return [int(x) for x in np.concatenate([[0], np.cumsum(lengths)[:-1]])] if len(lengths) else []


def form_rows(theta, R, starts: Sequence[int] = (0,)):
    """Write the rows of the checkpoints ``theta`` (T, m) into ``R`` (T, m), torch tensors of one
    dtype (float64 in the engine) and device: consecutive differences, each run's θ_0 at its
    start row. Returns ``R``. On the CPU in one pass (numpy's subtract into R's memory)."""
    if theta.device.type == "cpu":
        t = theta.numpy()
        np.subtract(t[1:], t[:-1], out=R.numpy()[1:])
    else:
        R[1:].copy_(theta[1:]).sub_(theta[:-1])
    for s in starts:
        R[s].copy_(theta[s])
    return R


def stacked_rows(X: np.ndarray, starts: Sequence[int] = (0,)) -> np.ndarray:
    """The rows (T, m) float64 of checkpoints ``X`` (T, m) in memory (numpy; :func:`form_rows`)."""
    X = np.asarray(X, dtype=np.float64)
    R = np.empty_like(X)
    R[1:] = X[1:] - X[:-1]
    R[list(starts)] = X[list(starts)]
    return R


def checkpoint_basis(T: int, starts: Sequence[int] = (0,)) -> np.ndarray:
    """``L`` (T, T): checkpoint t is the sum of rows from its run's start to t (X = L R), so the
    checkpoints' Gram is L G Lᵀ."""
    L = np.zeros((T, T))
    bounds = list(starts) + [T]
    for a, b in zip(bounds[:-1], bounds[1:]):
        L[a:b, a:b] = np.tril(np.ones((b - a, b - a)))
    return L


def selection_basis(T: int, indices) -> np.ndarray:
    """``M`` (n, T): the rows of the sub-trajectory θ_{i_0}, θ_{i_1}, … (increasing ``indices``
    of one run) as sums of the run's rows: θ_{i_0} = θ_0 + Σ_{s<i_0} u_s, then
    u_{i_{k−1}→i_k} = Σ_{i_{k−1}≤s<i_k} u_s. Its Gram is M G Mᵀ (no cancellation)."""
    idx = np.asarray(indices, dtype=np.int64)
    M = np.zeros((len(idx), T))
    M[0, : idx[0] + 1] = 1.0
    for k in range(1, len(idx)):
        M[k, idx[k - 1] + 1: idx[k] + 1] = 1.0
    return M
