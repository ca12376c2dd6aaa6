"""numpy's OpenBLAS, called directly: its thread count and the symmetric rank-k update.

numpy's Linux wheels bundle an OpenBLAS with 64-bit integers and decorated symbols
(``scipy_cblas_dsyrk64_`` in numpy 2, ``cblas_dsyrk64_`` in numpy 1.2x). The Gram engine calls
its ``cblas_dsyrk`` with β = 1, so each column sub-block adds its lower triangle straight into
G: half the flops of a square product, and no (T, T) scratch to fill, mirror and add per
sub-block (what ``R @ R.T`` through numpy costs; the methods page has the measurements).
Found among the process's mapped libraries (Linux: the OpenBLAS mapped into the process, which
is numpy's unless another library brought its own); any other BLAS, or another platform, gives
None and the engine keeps its torch product. The integer width of the call is the one the build
reports (``USE64BITINT`` in ``openblas_get_config``), never guessed from a symbol's name; a
build that does not say gets no direct ``dsyrk``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from dataclasses import dataclass

import torch

_ROW_MAJOR, _LOWER, _NO_TRANS = 101, 122, 111  # CBLAS enum values


@dataclass(frozen=True)
class OpenBLAS:
    """Entry points of the OpenBLAS numpy loaded; ``dsyrk`` is None where the build lacks CBLAS."""

    path: str
    set_threads: object
    get_threads: object
    dsyrk: object | None


@functools.lru_cache(maxsize=1)
def numpy_openblas() -> OpenBLAS | None:
    """The OpenBLAS mapped into this process (numpy's; found in /proc/self/maps), or None."""
    import numpy  # noqa: F401  (loads numpy's BLAS)

    try:
        with open("/proc/self/maps") as f:  # address perms offset dev inode path (which may hold spaces)
            paths = {parts[5].rstrip("\n") for parts in (line.split(maxsplit=5) for line in f)
                     if len(parts) == 6 and "openblas" in parts[5].rsplit("/", 1)[-1].lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)  # CDLL calls release the GIL: two workers multiply at once
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
                return OpenBLAS(path, set_, get, _dsyrk(lib, prefix, suffix))
    return None


def _dsyrk(lib, prefix: str, suffix: str):
    fn = getattr(lib, f"{prefix}cblas_dsyrk{suffix}", None)
    config = getattr(lib, f"{prefix}openblas_get_config{suffix}", None)
    if fn is None or config is None:
        return None
    config.restype, config.argtypes = ctypes.c_char_p, []
    n = ctypes.c_int64 if b"USE64BITINT" in (config() or b"") else ctypes.c_int  # the build's integer width
    e, d, p = ctypes.c_int, ctypes.c_double, ctypes.c_void_p
    fn.restype = None
    fn.argtypes = [e, e, e, n, n, d, p, n, d, p, n]
    return fn


def has_syrk() -> bool:
    """Whether :func:`syrk_lower_add` can run (numpy's BLAS is an OpenBLAS with CBLAS)."""
    blas = numpy_openblas()
    return blas is not None and blas.dsyrk is not None


def syrk_lower_add(R: torch.Tensor, G: torch.Tensor) -> None:
    """Add the lower triangle of R Rᵀ to G's: R (T, m), G (T, T), both C-contiguous float64
    on the CPU. G's strict upper triangle is left untouched (mirror it once at the end)."""
    if not has_syrk():
        raise RuntimeError("syrk_lower_add needs numpy's BLAS to be an OpenBLAS with CBLAS (see has_syrk())")
    T, m = R.shape
    if (R.dtype != torch.float64 or G.dtype != torch.float64 or R.device.type != "cpu" or G.device.type != "cpu"
            or G.shape != (T, T) or not (R.is_contiguous() and G.is_contiguous())):
        raise ValueError(f"syrk_lower_add needs C-contiguous float64 CPU tensors R (T, m) and G (T, T); "
                         f"got R {tuple(R.shape)} {R.dtype}, G {tuple(G.shape)} {G.dtype}")
    numpy_openblas().dsyrk(_ROW_MAJOR, _LOWER, _NO_TRANS, T, m, 1.0, R.data_ptr(), m, 1.0, G.data_ptr(), T)


_lock = threading.Lock()
_users = [0, 0]  # [passes inside numpy_blas_single_threaded, thread count to restore]


def numpy_blas_controllable() -> bool:
    """Whether :func:`numpy_blas_single_threaded` can limit numpy's BLAS (an OpenBLAS)."""
    return numpy_openblas() is not None


@contextlib.contextmanager
def numpy_blas_single_threaded():
    """numpy's OpenBLAS at one thread for the body, restored after the last overlapping user.

    Process-wide (OpenBLAS's pthreads build has no per-thread setting): while it holds, numpy
    products of other threads run on one core too. Torch's settings are untouched."""
    blas = numpy_openblas()
    if blas is None:
        yield
        return
    with _lock:
        if _users[0] == 0:
            _users[1] = blas.get_threads()
            blas.set_threads(1)
        _users[0] += 1
    try:
        yield
    finally:
        with _lock:
            _users[0] -= 1
            if _users[0] == 0:
                blas.set_threads(_users[1])
