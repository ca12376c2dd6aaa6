"""The streamed Gram engine: one block-major pass over a trajectory, exact in float64.

For each block (a slice of ``ncols`` parameters of one group signature, all T checkpoints at
once) the engine reads the (T, ncols) slice, converts it to float64, forms the rows
``R = [θ_0; θ_1 − θ_0; ...; θ_{T-1} − θ_{T-2}]`` (= [θ_0; u_0..u_{T-2}]) from the slice, and
accumulates ``G += R Rᵀ`` for that signature. A group's Gram is the sum over its signatures.
From G every hallmark follows by additions (``trajlib.hallmarks``); the full update Gram is
part of G, so update maps cost nothing extra.

Memory is O(T × block): a reader thread fills two staging buffers with ``os.preadv`` while the
previous block is multiplied (pinned buffers and asynchronous copies on CUDA). Under
``torch.distributed`` the ranks take every world-th block and all-reduce the Grams; on a sharded
run (``trajlib.shards``) read by as many ranks as wrote it, each rank streams the pieces it wrote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..formats import ST_DTYPES, torch_dtype
from ..groups import BlockPlan, block_nbytes, plan_blocks, resolve_groups
from ..manifest import TrajectoryError
from ..stats import GramStats
from .blas import has_syrk, numpy_blas_single_threaded, syrk_lower_add
from .rows import form_rows
from .threads import single_threaded

log = logging.getLogger("trajlib.gram")

DEFAULT_BLOCK_BYTES = 8 << 20  # one read slab: T rows × ncols float32 columns
COMPUTE_BYTES = 2 << 20  # one float64 (T, sub) work buffer on the CPU path (T = 64: 4,096 columns)
MAX_CACHED = 8  # Gram caches kept per folder; the least recently used beyond this are deleted


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available on this machine; use device='cpu'")
    return device


def _fill(traj, block, buf: torch.Tensor) -> torch.Tensor:
    """Read one block of all T checkpoints into the uint8 buffer ``buf``; (T, ncols) view."""
    dt = ST_DTYPES[block.dtype]
    n = block.ncols
    rows = buf.numpy()[: traj.T * n * dt.itemsize].view(dt).reshape(traj.T, n)
    for t in range(traj.T):
        for name, a, b, off in block.pieces:
            traj.read(t, name, a, b, rows[t, off: off + b - a])
    return buf[: traj.T * n * dt.itemsize]


def _block_gram(src: torch.Tensor, dtype: str, T: int, n: int, theta_buf, r_buf, G: torch.Tensor,
                sub: int | None = None, product: str = "square", starts=(0,)) -> None:
    """G += R Rᵀ with R = [θ_0; θ_1 − θ_0; ...] formed in float64 from the raw slice ``src``.

    ``src``: uint8 bytes of a (T, n) slice; ``theta_buf``/``r_buf``: float64 work buffers of
    ≥ T·sub elements; columns are processed ``sub`` at a time so the buffers stay in cache.
    ``product`` (see :func:`_product`): "square" (the full T×T, any device), "tiles" (lower
    block triangle in row tiles, torch) or "syrk" (numpy's OpenBLAS ``dsyrk`` adding the lower
    triangle into G, :func:`trajlib.gram.blas.syrk_lower_add`). "tiles" and "syrk" fill only the
    lower triangle of G: finish with :func:`_symmetrize`. ``starts``: rows where a run begins
    again from its own θ_0 (several runs in one pass, :mod:`trajlib.gram.rows`).
    """
    S = src.view(torch_dtype(dtype)).view(T, n)
    sub = n if sub is None else sub
    for c in range(0, n, sub):
        m = min(sub, n - c)
        theta = theta_buf[: T * m].view(T, m)
        R = r_buf[: T * m].view(T, m)
        theta.copy_(S[:, c: c + m])
        _multiply(form_rows(theta, R, starts), G, product)


def _multiply(R: torch.Tensor, G: torch.Tensor, product: str) -> None:
    """G += R Rᵀ for R (T, m) float64, the way ``product`` says (see :func:`_block_gram`)."""
    if product == "syrk":
        syrk_lower_add(R, G)
    elif product == "tiles":
        T = R.shape[0]
        for a in range(0, T, ROW_TILE):
            b = min(T, a + ROW_TILE)
            G[a:b, :b].addmm_(R[a:b], R[:b].T)
    else:
        G.addmm_(R, R.T)


ROW_TILE = 64  # rows of one tile of the lower-triangle product ("tiles")


def _product(T: int, workers: int = 2) -> str:
    """The lower-triangle product for T rows on the CPU: OpenBLAS's ``dsyrk`` adding into G
    whenever numpy's BLAS can be held at one thread per worker (the methods page compares it with
    numpy's ``R @ R.T`` and torch row tiles at every T); without that, torch row tiles. A lone
    worker (a one-block plan) keeps torch's threads for its tiles unless torch has one."""
    if has_syrk() and (workers > 1 or torch.get_num_threads() == 1):
        return "syrk"
    return "tiles" if T > ROW_TILE else "square"


def _symmetrize(Gs: torch.Tensor, product: str) -> torch.Tensor:
    """Mirror the lower triangle where ``product`` computed only that."""
    if product in ("tiles", "syrk"):
        Gs = torch.tril(Gs) + torch.tril(Gs, -1).transpose(1, 2)
    return Gs


def _staging_bytes(traj, plan: BlockPlan) -> int:
    item = max((ST_DTYPES[b.dtype].itemsize for b in plan.blocks), default=8)
    return traj.T * plan.max_cols * item


class _Reader:
    """Background thread filling pinned staging buffers, block after block, in ``order``."""

    def __init__(self, traj, plan: BlockPlan, order: list[int], pin: bool, depth: int = 2):
        self.traj, self.plan, self.order = traj, plan, order
        self.size = _staging_bytes(traj, plan)
        self.free: queue.Queue = queue.Queue()
        for _ in range(depth):
            self.free.put((torch.empty(self.size, dtype=torch.uint8, pin_memory=pin), None))
        self.ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="trajlib-gram-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for bi in self.order:
                buf, event = self.free.get()
                if self._stop.is_set():
                    return
                if event is not None:
                    event.synchronize()  # the device copy out of this buffer has finished
                self.ready.put((bi, _fill(self.traj, self.plan.blocks[bi], buf)))
        except BaseException as exc:
            self.ready.put((None, exc))

    def close(self) -> None:
        self._stop.set()
        for _ in range(2):
            self.free.put((None, None))
        self.thread.join(timeout=10)


def _rank_world(distributed: bool | None) -> tuple[int, int]:
    import torch.distributed as dist

    use = dist.is_available() and dist.is_initialized() if distributed is None else distributed
    if not use:
        return 0, 1
    if not dist.is_initialized():
        raise ValueError("distributed=True but torch.distributed is not initialised")
    return dist.get_rank(), dist.get_world_size()


def _use_triton(kernel: str, device: torch.device) -> bool:
    from . import triton_kernel as triton_gram

    if kernel not in ("auto", "torch", "triton"):
        raise ValueError(f"kernel={kernel!r}: expected 'auto', 'torch' or 'triton'")
    if kernel == "torch" or (kernel == "auto" and device.type != "cuda"):
        return False
    ok = triton_gram.available(device)
    if kernel == "triton" and not ok:
        raise ValueError(f"kernel='triton' cannot run on {device} (needs CUDA with compute capability "
                         f"≥ 8.0 and Triton, or TRITON_INTERPRET=1 on the CPU)")
    if not ok:
        log.info("fused Triton Gram kernel unavailable on %s; using the torch path", device)
    return ok


def accumulate(traj, plan: BlockPlan, *, device: torch.device, rank: int = 0, world: int = 1,
               progress: bool = True, workers: int | None = None, triton: bool = False) -> torch.Tensor:
    """Per-signature Grams (S, T, T) float64 of this rank's blocks (``rank::world``);
    ``triton``: use the fused kernel (see :func:`_use_triton`)."""
    order = list(range(rank, len(plan.blocks), world))
    total = sum(block_nbytes(traj, plan.blocks[i]) for i in order)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="gram", disable=not progress or rank != 0,
               leave=False, delay=1.0)
    try:
        if triton and device.type == "cpu":  # the Triton interpreter: tests of the kernel
            return _accumulate_interpreted(traj, plan, order, bar)
        if device.type == "cuda":
            return _accumulate_cuda(traj, plan, order, device, bar, triton)
        return _accumulate_cpu(traj, plan, order, bar, workers)
    finally:
        bar.close()


def _accumulate_cpu(traj, plan: BlockPlan, order: list[int], bar, workers: int | None) -> torch.Tensor:
    """Reference path. ``workers`` threads (default: torch's thread count) each take every
    workers-th block end to end (read, convert, difference, product) with single-threaded BLAS:
    on few cores this beats one multi-threaded GEMM on (T, ncols) panels, and reads of one
    worker overlap products of the other. Static assignment keeps the sum order fixed."""
    T, S = traj.T, len(plan.members)
    starts = getattr(traj, "starts", (0,))
    workers = max(1, min(workers or torch.get_num_threads(), len(order) or 1))
    partial = [torch.zeros(S, T, T, dtype=torch.float64) for _ in range(workers)]
    errors: list[BaseException] = []
    product = _product(T, workers)

    def work(w: int) -> None:
        try:
            with single_threaded() if workers > 1 else contextlib.nullcontext():
                _work(w)
        except BaseException as exc:
            errors.append(exc)

    def _work(w: int) -> None:
        buf = torch.empty(_staging_bytes(traj, plan), dtype=torch.uint8)
        sub = max(256, COMPUTE_BYTES // (8 * T))
        theta_buf = torch.empty(T * min(sub, plan.max_cols), dtype=torch.float64)
        r_buf = torch.empty_like(theta_buf)
        for bi in order[w::workers]:
            if errors:
                return
            block = plan.blocks[bi]
            src = _fill(traj, block, buf)
            _block_gram(src, block.dtype, T, block.ncols, theta_buf, r_buf, partial[w][block.signature],
                        sub, product, starts)
            bar.update(len(src))

    with numpy_blas_single_threaded() if product == "syrk" else contextlib.nullcontext():
        pool = [threading.Thread(target=work, args=(w,), name=f"trajlib-gram-{w}") for w in range(1, workers)]
        for th in pool:
            th.start()
        work(0)  # the calling thread is worker 0
        for th in pool:
            th.join()
    if errors:
        raise errors[0]
    return _symmetrize(sum(partial[1:], partial[0]), product)


def _accumulate_cuda(traj, plan: BlockPlan, order: list[int], device, bar, triton: bool = False) -> torch.Tensor:
    """Pinned staging buffers filled by a reader thread; host-to-device copies on a side
    stream overlap the products of the previous block. ``triton``: the fused kernel of
    :mod:`trajlib.gram.triton_kernel` instead of convert + difference + ``addmm``."""
    T, S = traj.T, len(plan.members)
    Gs = torch.zeros(S, T, T, dtype=torch.float64, device=device)
    if not order:
        return Gs
    from . import triton_kernel as triton_gram

    reader = _Reader(traj, plan, order, pin=True)
    cap = T * plan.max_cols
    theta_buf = None if triton else torch.empty(cap, dtype=torch.float64, device=device)
    r_buf = None if triton else torch.empty_like(theta_buf)
    raw = [torch.empty(reader.size, dtype=torch.uint8, device=device) for _ in range(2)]
    copy_stream = torch.cuda.Stream(device)
    compute = torch.cuda.current_stream(device)
    consumed: list = [None, None]  # per device buffer: event after the product that read it
    try:
        for k in range(len(order)):
            bi, buf = reader.ready.get()
            if bi is None:
                raise buf
            block = plan.blocks[bi]
            dst = raw[k % 2][: len(buf)]
            with torch.cuda.stream(copy_stream):
                if consumed[k % 2] is not None:
                    copy_stream.wait_event(consumed[k % 2])
                dst.copy_(buf, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(copy_stream)
            reader.free.put((buf, copied))
            compute.wait_event(copied)
            if triton:
                x = dst.view(torch_dtype(block.dtype)).view(T, block.ncols)
                triton_gram.block_gram(x, Gs[block.signature])
            else:
                _block_gram(dst, block.dtype, T, block.ncols, theta_buf, r_buf, Gs[block.signature],
                            starts=getattr(traj, "starts", (0,)))
            consumed[k % 2] = torch.cuda.Event()
            consumed[k % 2].record(compute)
            bar.update(len(buf))
    finally:
        reader.close()
    return triton_gram.finish(Gs) if triton else Gs


def _accumulate_interpreted(traj, plan: BlockPlan, order: list[int], bar) -> torch.Tensor:
    """The fused kernel under ``TRITON_INTERPRET=1`` on the CPU: same blocks, same kernel code."""
    from . import triton_kernel as triton_gram

    T, S = traj.T, len(plan.members)
    Gs = torch.zeros(S, T, T, dtype=torch.float64)
    buf = torch.empty(_staging_bytes(traj, plan), dtype=torch.uint8)
    for bi in order:
        block = plan.blocks[bi]
        src = _fill(traj, block, buf)
        triton_gram.block_gram(src.view(torch_dtype(block.dtype)).view(T, block.ncols), Gs[block.signature])
        bar.update(len(src))
    return triton_gram.finish(Gs)


def _cache_path(traj, cache) -> Path | None:
    if cache is False or cache is None:
        return None
    if cache is not True:
        return Path(cache)
    src = Path(traj.source)
    if src.is_dir() and os.access(src, os.W_OK):
        return src
    root = Path(os.environ.get("TRAJLIB_CACHE", Path.home() / ".cache" / "trajlib"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _cache_key(traj, groups: dict) -> str:
    h = hashlib.sha256(traj.fingerprint().encode())
    h.update(json.dumps(groups, sort_keys=True).encode())
    return h.hexdigest()[:20]


def gram(traj, *, groups=None, device="cpu", block_bytes: int = DEFAULT_BLOCK_BYTES, cache=True,
         progress: bool = True, distributed: bool | None = None, kernel: str = "auto") -> GramStats:
    """Stream ``traj`` once and return the per-group Grams of [θ_0; u_0..u_{T-2}] (GramStats).

    ``traj`` may be a list of trajectories of one architecture: one pass gives their joint Gram
    (each run's rows from its own θ_0, :mod:`trajlib.joint`); ``meta["runs"]`` names them and
    :func:`trajlib.joint.run_stats` cuts out each run's own stats.

    ``traj`` may also be a :class:`~trajlib.sketch.SketchedTrajectory` (``traj.sketches()``):
    then G is the sketches' Gram in the same basis, ``meta["approximate"]`` is True, and only
    ``groups`` applies (see :mod:`trajlib.sketch` for the error).

    ``groups``: specs of ``trajlib.groups`` (default ``["all"]``), all computed in this one
    pass. ``block_bytes``: size of one read slab (T rows of float32 columns); memory is about
    workers × (block_bytes + 4 MiB). ``cache``: True saves/reuses ``gram-<key>.npz`` beside
    the run (or under ``$TRAJLIB_CACHE``; at most ``MAX_CACHED`` kept per folder, a corrupt
    one is reported and recomputed), a path chooses the folder, False disables it.
    ``distributed``: None uses torch.distributed when it is initialised. ``kernel``: "auto"
    (the fused Triton kernel on a capable GPU, else torch), "torch" or "triton".
    """
    from ..sketch import SketchedTrajectory, sketch_gram

    if isinstance(traj, (list, tuple)) and traj and all(isinstance(t, SketchedTrajectory) for t in traj):
        return sketch_gram(list(traj), groups=groups)
    if isinstance(traj, (list, tuple)):
        from ..joint import JointTrajectory

        traj = JointTrajectory(traj)
    if isinstance(traj, SketchedTrajectory):  # approximate: the sketches' own Gram, same basis
        return sketch_gram(traj, groups=groups)
    device = _device(device)
    resolved = resolve_groups(traj, groups)
    triton = _use_triton(kernel, device)
    if triton and len(getattr(traj, "starts", (0,))) > 1:
        if kernel == "triton":
            raise ValueError("kernel='triton' forms one run's rows; a joint Gram uses kernel='torch'")
        triton = False
    folder = _cache_path(traj, cache)
    key = _cache_key(traj, resolved)
    path = folder / f"gram-{key}.npz" if folder is not None else None
    cached = _load_cached(path, key)
    if cached is not None:
        return cached
    rank, world = _rank_world(distributed)
    block_cols = max(1, block_bytes // (4 * traj.T))
    plan = plan_blocks(traj, resolved, block_cols=block_cols)
    if world > 1 and getattr(traj, "world_size", None) == world:  # a sharded run read by its own ranks:
        local = plan_blocks(traj, _owned(resolved, traj.owned_segments(rank)), block_cols=block_cols)
        Gs = _group_sums(local, accumulate(traj, local, device=device, progress=progress, triton=triton))
    else:  # ranks take every world-th block
        Gs = _group_sums(plan, accumulate(traj, plan, device=device, rank=rank, world=world, progress=progress,
                                          triton=triton))
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(Gs)
    Gs = Gs.cpu().numpy()
    Gs = 0.5 * (Gs + Gs.transpose(0, 2, 1))  # exactly symmetric whatever the product's rounding
    _raise_if_nonfinite(traj, resolved, plan.groups, Gs)
    grams = {gname: Gs[gi] for gi, gname in enumerate(plan.groups)}
    meta = {"key": key, "source": traj.source, "fingerprint": traj.fingerprint(), "device": str(device),
            "kernel": "triton" if triton else "torch", "block_bytes": block_bytes, "world_size": world}
    if hasattr(traj, "run_meta"):
        meta["runs"] = traj.run_meta()
    audit = (traj.meta or {}).get("audit")
    if audit:  # a public suite's coverage and tokens travel with its hallmarks
        meta["audit"] = {k: audit[k] for k in ("suite", "coverage", "tokens", "dropped") if k in audit}
    stats = GramStats(traj.steps.copy(), traj.epochs.copy(), grams, dict(zip(plan.groups, plan.n_params)),
                      list(traj.labels), meta)
    if path is not None and rank == 0:
        try:
            stats.save(path)
            _prune_cache(folder)
        except OSError as exc:
            log.warning("could not cache the Gram at %s: %s", path, exc)
    return stats


def _load_cached(path: Path | None, key: str) -> GramStats | None:
    if path is None or not path.is_file():
        return None
    try:
        stats = GramStats.load(path)
    except Exception as exc:  # a torn or foreign file is a cache miss, never fatal
        log.warning("%s: unreadable Gram cache (%s: %s); recomputing", path, type(exc).__name__, exc)
        return None
    if stats.meta.get("key") != key:
        return None
    log.info("reusing %s", path)
    os.utime(path)  # most recently used
    return stats


def _prune_cache(folder: Path) -> None:
    caches = sorted(folder.glob("gram-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in caches[MAX_CACHED:]:
        old.unlink(missing_ok=True)


def _group_sums(plan: BlockPlan, Gs: torch.Tensor) -> torch.Tensor:
    """Per-group Grams (groups, T, T) from per-signature ones: a group sums its signatures."""
    out = Gs.new_zeros((len(plan.groups), *Gs.shape[1:]))
    for s, member in enumerate(plan.members):
        for gi in member:
            out[gi] += Gs[s]
    return out


def _owned(groups: dict, owned: dict[str, list[tuple[int, int]]]) -> dict:
    """The groups' segments cut to the flat ranges this rank owns (a sharded run's pieces)."""
    out = {}
    for gname, segments in groups.items():
        out[gname] = [(t, max(a, lo), min(b, hi)) for t, a, b in segments for lo, hi in owned.get(t, ())
                      if max(a, lo) < min(b, hi)]
    return out


def _raise_if_nonfinite(traj, groups: dict, names_in_order: list[str], Gs: np.ndarray) -> None:
    bad = [g for gi, g in enumerate(names_in_order) if not np.isfinite(Gs[gi]).all()]
    if not bad:
        return
    names = []
    for g in bad:
        names += [t for t, _, _ in groups[g] if t not in names]
    found = traj.find_nonfinite(names)
    if found is None:
        raise TrajectoryError(f"{traj.source}: the Gram overflowed float64 (values too large) in "
                              f"tensors {names[:3]}")
    t, name = found
    raise TrajectoryError(f"{traj.file_of(t, name)}: tensor {name!r} of checkpoint step "
                          f"{traj.steps[t]} holds NaN or Inf")
