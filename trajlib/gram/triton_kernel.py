"""A fused Triton kernel for the GPU Gram: one read of each checkpoint block, updates formed on
chip, tensor-core products at float32-class accuracy, float64 accumulation across tiles.

For a block X (T, n) of T checkpoints (float32, float16 or bfloat16 on the device) it adds
R Rᵀ to G (T, T, float64) where R = [θ_0; θ_1 − θ_0; ...; θ_{T-1} − θ_{T-2}], the rows of one
run that ``trajlib.gram``'s torch path forms (:mod:`trajlib.gram.rows`):

* each program owns one (row tile i, row tile j ≤ i, column chunk) triple; it loads the two
  row tiles and the rows just above them (the previous checkpoint; served from L2), forms the
  differences in registers, and multiplies with ``tl.dot(..., input_precision="tf32x3")``:
  operands split into high and low TF32 parts, three tensor-core products, float32 sums;
* each chunk's float32 partial (over ``CHUNK`` columns) is added to G in float64 with atomics,
  so rounding does not grow with P; only the lower triangle of tiles is computed and
  :func:`finish` mirrors it.

Selected by :func:`available` (CUDA, compute capability ≥ 8.0, Triton importable); otherwise
the engine logs the fallback and uses torch. ``TRITON_INTERPRET=1`` runs the same kernel on the
CPU for tests.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("trajlib.gram.triton_kernel")

BLOCK_T = 32   # rows per tile
BLOCK_K = 64   # columns per tl.dot
CHUNK = 1024   # columns summed in float32 before the float64 atomic add


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """Whether the fused kernel can run on ``device`` (else the torch path is used)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device.type == "cpu":
        return _interpreting()
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def gram_tiles(x_ptr, g_ptr, T, n, stride_x, BT: tl.constexpr, BK: tl.constexpr, CH: tl.constexpr,
                   PRECISION: tl.constexpr):
        ti = tl.program_id(0)
        tj = tl.program_id(1)
        if tj > ti:
            return
        c0 = tl.program_id(2) * CH
        rows_i = ti * BT + tl.arange(0, BT)
        rows_j = tj * BT + tl.arange(0, BT)
        in_i = rows_i < T
        in_j = rows_j < T
        prev_i = (rows_i >= 1) & in_i
        prev_j = (rows_j >= 1) & in_j
        acc = tl.zeros((BT, BT), dtype=tl.float32)
        for k in range(0, CH, BK):
            cols = c0 + k + tl.arange(0, BK)
            in_c = cols < n
            xi = tl.load(x_ptr + rows_i[:, None] * stride_x + cols[None, :],
                         mask=in_i[:, None] & in_c[None, :], other=0.0).to(tl.float32)
            pi = tl.load(x_ptr + (rows_i[:, None] - 1) * stride_x + cols[None, :],
                         mask=prev_i[:, None] & in_c[None, :], other=0.0).to(tl.float32)
            xj = tl.load(x_ptr + rows_j[:, None] * stride_x + cols[None, :],
                         mask=in_j[:, None] & in_c[None, :], other=0.0).to(tl.float32)
            pj = tl.load(x_ptr + (rows_j[:, None] - 1) * stride_x + cols[None, :],
                         mask=prev_j[:, None] & in_c[None, :], other=0.0).to(tl.float32)
            ri = xi - pi  # u_{t-1} for t ≥ 1, θ_0 for t = 0
            rj = xj - pj
            acc += tl.dot(ri, tl.trans(rj), input_precision=PRECISION)
        out = g_ptr + rows_i[:, None] * T + rows_j[None, :]
        tl.atomic_add(out, acc.to(tl.float64), mask=in_i[:, None] & in_j[None, :])

    _KERNEL = gram_tiles
    return _KERNEL


def block_gram(x: torch.Tensor, G: torch.Tensor, *, precision: str = "tf32x3", chunk: int = CHUNK) -> None:
    """Add the lower tiles of R Rᵀ for the checkpoint block ``x`` (T, n) to ``G`` (T, T) float64.

    ``precision``: ``tl.dot``'s input precision: "tf32x3" (float32-class, tensor cores),
    "ieee" (plain float32 FMA) or "tf32" (fast, about 1e-4 error; for measurements only).
    Call :func:`finish` once after the last block.
    """
    import triton

    T, n = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    grid = (triton.cdiv(T, BLOCK_T), triton.cdiv(T, BLOCK_T), triton.cdiv(n, chunk))
    _kernel()[grid](x, G, T, n, x.stride(0), BT=BLOCK_T, BK=BLOCK_K, CH=chunk, PRECISION=precision)


def finish(G: torch.Tensor) -> torch.Tensor:
    """Mirror the computed lower tiles: (..., T, T) float64, exactly symmetric."""
    lower = torch.tril(G)
    return lower + torch.tril(G, -1).transpose(-1, -2)
