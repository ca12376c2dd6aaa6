"""The Gram of a trajectory: its rows (:mod:`~trajlib.gram.rows`: [θ_0; u_0; …] per run, and
where several runs' rows begin), the streamed engine (:mod:`~trajlib.gram.engine`, CPU, CUDA and
torch.distributed), the fused GPU kernel (:mod:`~trajlib.gram.triton_kernel`) and the CPU
product's BLAS and thread helpers (:mod:`~trajlib.gram.blas`, :mod:`~trajlib.gram.threads`).
``trajlib.gram(traj)`` is :func:`trajlib.gram.engine.gram`, so the attribute ``trajlib.gram`` is
that function: import the modules by name (``from trajlib.gram.rows import stacked_rows``)."""

from .engine import DEFAULT_BLOCK_BYTES, gram

__all__ = ["gram", "DEFAULT_BLOCK_BYTES"]
