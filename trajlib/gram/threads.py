"""Per-thread limits on torch's CPU threads, leaving the rest of the process alone.

The Gram engine's CPU workers each want single-threaded BLAS. ``torch.set_num_threads`` would
do it, but it also stores a process-wide default that every thread starting its first torch
operation meanwhile adopts for good. Where torch ships GNU OpenMP (the standard Linux build, whose MKL uses the GNU
OpenMP threading layer), :func:`single_threaded` sets only the calling thread's OpenMP team size
(an OpenMP per-thread setting, which both torch's intra-op pool and MKL's GEMM follow: that
thread runs its products on one core, others keep all of them); elsewhere it
falls back to ``torch.set_num_threads`` and restores it. numpy's OpenBLAS, whose thread count
is process-wide, is held at one thread by :func:`trajlib.gram.blas.numpy_blas_single_threaded`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger("trajlib.gram.threads")


@functools.lru_cache(maxsize=1)
def _per_thread_api():
    """(omp_set_num_threads, omp_get_max_threads) of the OpenMP runtime torch loaded, or None."""
    lib = Path(torch.__file__).parent / "lib"
    try:
        gomp = ctypes.CDLL(str(next(lib.glob("libgomp*.so*"))))
        return gomp.omp_set_num_threads, gomp.omp_get_max_threads
    except (StopIteration, OSError, AttributeError):
        log.info("no per-thread OpenMP/MKL controls in this torch build; using torch.set_num_threads")
        return None


@contextlib.contextmanager
def single_threaded():
    """Run the body with single-threaded BLAS and intra-op parallelism in this thread only."""
    api = _per_thread_api()
    if api is None:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)
        return
    omp_set, omp_get = api
    before = omp_get()
    omp_set(1)
    try:
        yield
    finally:
        omp_set(before)
