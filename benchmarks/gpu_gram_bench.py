"""GPU Gram: the fused Triton kernel against torch baselines and the read-once bound, in one run.

    python benchmarks/gpu_gram_bench.py [--P 16777216] [--T 32 128] [--save book/benchmarks/gpu_gram_bench.json]

For each T: a drifting, noisy trajectory of T float32 checkpoints of P parameters is built on the
GPU (late steps ~1e-3 of the first, so update cosines are a real test), and we time (CUDA events,
median of 5 after a warm-up):

* the read-once bound: the bytes of the block at the measured device copy bandwidth;
* ``torch.mm`` in float64 on the raw checkpoints (exact), in float32, and in TF32;
* trajlib's torch path (convert, difference, ``addmm`` per block);
* the fused kernel (``tf32x3``), which reads each element once and forms updates on chip.

Every method's trajectory map and consecutive-update cosines are compared with a float64
reference in the update basis; the raw-Gram baselines derive update cosines by subtraction (the
cancellation pitfall), which is why their update errors are large. Then the host-memory stream:
a pinned host copy of the trajectory through double-buffered staging (contiguous row slices,
copy stream + compute stream) and through ``trajlib.gram`` reading a run on /dev/shm, beside the
measured pinned host-to-device copy rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trajlib import hallmarks as H
from trajlib.gram import triton_kernel as triton_gram
from trajlib.gram.engine import _block_gram


def timed(fn, reps: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return float(np.median(times))


def trajectory(T: int, P: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    X = torch.empty(T, P, device="cuda", dtype=torch.float32)
    theta = torch.randn(P, device="cuda", generator=g)
    drift = torch.randn(P, device="cuda", generator=g)
    for t in range(T):
        X[t] = theta
        scale = 0.05 * 0.9**t
        theta = theta + scale * (drift + torch.randn(P, device="cuda", generator=g))
    return X


def update_basis_gram64(X: torch.Tensor, chunk: int = 1 << 22) -> np.ndarray:
    """Exact reference: float64 rows [θ_0; u_0..] built from the float32 block, chunk by chunk."""
    T = X.shape[0]
    G = torch.zeros(T, T, dtype=torch.float64, device=X.device)
    for c in range(0, X.shape[1], chunk):
        x = X[:, c: c + chunk].double()
        R = torch.cat([x[:1], x[1:] - x[:-1]])
        G += R @ R.T
    return G.cpu().numpy()


def raw_to_update_basis(K: np.ndarray) -> np.ndarray:
    """G of [θ_0; u] from a raw Gram K = X Xᵀ by subtraction (what the engine never does)."""
    T = len(K)
    L = np.eye(T)
    L[np.arange(1, T), np.arange(0, T - 1)] = -1.0
    return L @ K @ L.T


def errors(G: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {"map": float(np.max(np.abs(H.trajectory_map(G) - H.trajectory_map(ref)))),
            "update_cos": float(np.nanmax(np.abs(H.consecutive_update_cos(G) - H.consecutive_update_cos(ref))))}


def bench_T(T: int, P: int, block_cols: int) -> list[dict]:
    X = trajectory(T, P)
    nbytes = X.numel() * 4
    ref = update_basis_gram64(X)
    rows = []
    scratch = torch.empty_like(X)
    copy_s = timed(lambda: scratch.copy_(X))
    bw = 2 * nbytes / copy_s
    rows.append({"method": "read-once bound", "seconds": nbytes / bw, "note": f"copy bandwidth {bw / 1e12:.2f} TB/s"})
    scratch = None  # free device memory for what follows
    X64 = X.double()
    t = timed(lambda: X64 @ X64.T)
    rows.append({"method": "torch.mm float64 (raw θ)", "seconds": t,
                 **errors(raw_to_update_basis((X64 @ X64.T).cpu().numpy()), ref)})
    X64 = None
    for name, tf32 in (("torch.mm float32", False), ("torch.mm TF32", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        t = timed(lambda: X @ X.T)
        rows.append({"method": name, "seconds": t,
                     **errors(raw_to_update_basis((X @ X.T).double().cpu().numpy()), ref)})
    torch.backends.cuda.matmul.allow_tf32 = False
    theta_buf = torch.empty(T * block_cols, dtype=torch.float64, device="cuda")
    r_buf = torch.empty_like(theta_buf)
    def torch_path():
        G = torch.zeros(T, T, dtype=torch.float64, device="cuda")
        for c in range(0, P, block_cols):
            n = min(block_cols, P - c)
            src = X[:, c: c + n].contiguous().view(torch.uint8).view(-1)
            _block_gram(src, "F32", T, n, theta_buf, r_buf, G)
        return G

    t = timed(torch_path)
    rows.append({"method": "trajlib torch path (per block)", "seconds": t, **errors(torch_path().cpu().numpy(), ref)})
    theta_buf = r_buf = None
    for precision in ("tf32x3", "ieee"):
        def kernel():
            G = torch.zeros(T, T, dtype=torch.float64, device="cuda")
            triton_gram.block_gram(X, G, precision=precision)
            return triton_gram.finish(G)

        t = timed(kernel)
        rows.append({"method": f"fused Triton kernel ({precision})", "seconds": t, **errors(kernel().cpu().numpy(), ref)})
    for r in rows:
        r.update(T=T, P=P, gbytes=nbytes / 1e9)
    return rows


def bench_host_stream(T: int, P: int, block_cols: int) -> list[dict]:
    X = trajectory(T, P).cpu().pin_memory()
    nbytes = X.numel() * 4
    big = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    flat = X.view(-1).view(torch.uint8)
    h2d = timed(lambda: big.copy_(flat, non_blocking=True), reps=3)
    big = None
    bufs = [torch.empty(T, block_cols, device="cuda") for _ in range(2)]
    copy_stream, compute = torch.cuda.Stream(), torch.cuda.current_stream()

    def stream():
        G = torch.zeros(T, T, dtype=torch.float64, device="cuda")
        done = [None, None]
        for k, c in enumerate(range(0, P, block_cols)):
            n = min(block_cols, P - c)
            dst = bufs[k % 2][:, :n]
            with torch.cuda.stream(copy_stream):
                if done[k % 2] is not None:
                    copy_stream.wait_event(done[k % 2])
                for t in range(T):  # each checkpoint's row slice is contiguous in host memory
                    dst[t].copy_(X[t, c: c + n], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(copy_stream)
            compute.wait_event(ev)
            triton_gram.block_gram(dst, G)
            done[k % 2] = torch.cuda.Event()
            done[k % 2].record(compute)
        return triton_gram.finish(G)

    t = timed(stream, reps=3)
    rows = [{"method": "pinned host→device copy", "seconds": h2d, "gbps": nbytes / h2d / 1e9},
            {"method": "host stream, double-buffered + kernel", "seconds": t, "gbps": nbytes / t / 1e9,
             "of_copy_rate": h2d / t}]
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        import trajlib

        model = torch.nn.Linear(P // 1024, 1024, bias=False)
        with torch.no_grad(), trajlib.Recorder(model, f"{tmp}/run", every=1) as rec:
            for s in range(1, T):
                model.weight.copy_(X[s, : model.weight.numel()].view_as(model.weight))
                rec.step(s)
        traj = trajlib.open_trajectory(f"{tmp}/run")
        t0 = time.perf_counter()
        trajlib.gram(traj, device="cuda", cache=False, progress=False)
        t = time.perf_counter() - t0
        nb = traj.nbytes
        rows.append({"method": "trajlib.gram from a run on /dev/shm (preadv → pinned → GPU)", "seconds": t,
                     "gbps": nb / t / 1e9, "of_copy_rate": (nb / t) / (nbytes / h2d)})
    for r in rows:
        r.update(T=T, P=P, gbytes=nbytes / 1e9)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--P", type=int, default=1 << 24)
    p.add_argument("--T", type=int, nargs="+", default=[32, 128])
    p.add_argument("--block-cols", type=int, default=1 << 20)
    p.add_argument("--stream-T", type=int, default=64)
    p.add_argument("--save", help="write the results as JSON (for the book's methods page)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_gram_bench: no CUDA device; the kernel's CPU checks are in tests/test_triton_gram.py")
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}")
    rows = []
    for T in args.T:
        part = bench_T(T, args.P, args.block_cols)
        bound = part[0]["seconds"]
        mm64 = next(r["seconds"] for r in part if "float64" in r["method"])
        print(f"\nT={T}, P={args.P:,} ({part[0]['gbytes']:.2f} GB float32)")
        for r in part:
            err = f"map {r['map']:.1e}  update cos {r['update_cos']:.1e}" if "map" in r else r.get("note", "")
            print(f"  {r['method']:34s} {1e3 * r['seconds']:8.2f} ms  {r['seconds'] / bound:5.2f}× bound  "
                  f"{mm64 / r['seconds']:5.2f}× vs fp64 mm   {err}")
        rows += part
    part = bench_host_stream(args.stream_T, args.P, args.block_cols)
    print(f"\nfrom host memory, T={args.stream_T}:")
    for r in part:
        extra = f"  {100 * r['of_copy_rate']:.0f}% of the copy rate" if "of_copy_rate" in r else ""
        print(f"  {r['method']:58s} {r['gbps']:6.1f} GB/s{extra}")
    rows += part
    if args.save:
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps({"device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                                               "host": platform.node(), "rows": rows}, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_gram_bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
