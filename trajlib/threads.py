"""Per-thread limits on torch's CPU threads, leaving the rest of the process alone.

The Gram engine's CPU workers each want single-threaded BLAS. ``torch.set_num_threads`` would
do it, but it also stores a process-wide default that every thread starting its first torch
operation meanwhile adopts for good. Where torch ships GNU OpenMP (the standard Linux build, whose MKL uses the GNU
OpenMP threading layer), :func:`single_threaded` sets only the calling thread's OpenMP team size
(an OpenMP per-thread setting, which both torch's intra-op pool and MKL's GEMM follow; measured:
a 1,500² float64 product takes 2× longer in that thread, others keep both cores); elsewhere it
falls back to ``torch.set_num_threads`` and restores it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
from pathlib import Path

import torch

log = logging.getLogger("trajlib.threads")


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


@functools.lru_cache(maxsize=1)
def _numpy_openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS numpy loaded, or None.

    Found among the process's mapped libraries (Linux); any other BLAS under numpy, or another
    platform, gives None and the Gram engine keeps its torch product."""
    import numpy  # noqa: F401  (loads numpy's BLAS)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            for suffix in ("64_", "", "_64"):
                try:
                    get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
                    set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
                except AttributeError:
                    continue
                get.restype, set_.restype = ctypes.c_int, None
                set_.argtypes = [ctypes.c_int]
                return set_, get
    return None


_blas_lock = threading.Lock()
_blas_users = [0, 0]  # [passes inside numpy_blas_single_threaded, thread count to restore]


def numpy_blas_controllable() -> bool:
    """Whether :func:`numpy_blas_single_threaded` can limit numpy's BLAS (an OpenBLAS)."""
    return _numpy_openblas() is not None


@contextlib.contextmanager
def numpy_blas_single_threaded():
    """numpy's OpenBLAS at one thread for the body, restored after the last overlapping user.

    Unlike :func:`single_threaded` this is process-wide (OpenBLAS's pthreads build has no
    per-thread setting): while it holds, numpy products of other threads run on one core too.
    Torch's settings are untouched."""
    api = _numpy_openblas()
    if api is None:
        yield
        return
    set_, get = api
    with _blas_lock:
        if _blas_users[0] == 0:
            _blas_users[1] = get()
            set_(1)
        _blas_users[0] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users[0] -= 1
            if _blas_users[0] == 0:
                set_(_blas_users[1])
