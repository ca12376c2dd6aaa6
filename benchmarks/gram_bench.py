"""Time trajlib.gram against its baselines (the naive pairwise loop, sklearn, the fp64 bound) on one run, and print ratios.

    python benchmarks/gram_bench.py [--T 64] [--P 4194304] [--run DIR] [--sweep 256 1024] [--save F]

Builds a run on disk with ``Recorder`` (T checkpoints of P float32 parameters, about
T·P·4 bytes), then, each method in its own subprocess (so peak memory is its own), best of
three with a warm page cache:

* trajlib.gram, the default pass (map, relative map, update map and bands, float64);
* (a) stack all checkpoints + ``sklearn.metrics.pairwise.cosine_similarity`` (the map only);
* (b) the naive loop: load two checkpoints, ``cosine_similarity``, for every pair (timed on
  the pairs among the first ``--naive-T`` checkpoints and scaled to all pairs);
* (c) one plain read of every byte (the streaming bound);
* the machine's fp64 GEMM peak, measured in the same run (best of three 2048² float64
  ``torch.mm`` on all cores): the exact Gram of one pass needs T(T+1)P flops (the lower
  triangle of G, 2P flops an entry), so T(T+1)P / peak is a bound no fp64 pass can beat.
  trajlib's time is printed as a multiple of it, with the GFLOP/s it reached.

``--products 64 256 1024`` times the CPU product alone, each way the engine could take it (its
OpenBLAS ``dsyrk`` into G, numpy's ``R @ R.T`` into a scratch, torch row tiles, one square addmm),
as a fraction of the fp64 peak bound.

``--sweep`` repeats trajlib, sklearn and the bound at more T with the same bytes on disk
(P = T₀·P₀ / T), so time over T shows where the pass is compute-bound (∝ T at fixed bytes,
i.e. ∝ T² at fixed P).

Accuracy is the largest absolute error of the trajectory map against a float64 dense oracle
(for trajlib also the relative and update maps and the norms). No wall-clock bound is asserted
anywhere; this script prints what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def status_mb(key: str) -> float:
    """A memory line of /proc/self/status in MB: VmRSS (now) or VmHWM (peak; unlike ru_maxrss,
    not inherited over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_run(run: Path, T: int, P: int) -> None:
    import torch

    import trajlib

    if (run / "manifest.json").exists():
        old = trajlib.open_trajectory(run)
        if (old.T, old.P) == (T, P):
            return
    torch.manual_seed(0)
    width = min(1024, int(P**0.5))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(max(1, P // width**2))])
    drift = [torch.randn_like(p) * 1e-2 for p in model.parameters()]
    with torch.no_grad(), trajlib.Recorder(model, run, every=1, fresh=True) as rec:
        for step in range(1, T):
            scale = 0.97**step  # shrinking steps: late updates are ~0.1% of the first
            for p, d in zip(model.parameters(), drift):
                p.add_(scale * (d + 5e-3 * torch.randn_like(p)))
            rec.step(step)


def files(run: Path) -> list[Path]:
    manifest = json.loads((run / "manifest.json").read_text())
    return [run / c["file"] for c in manifest["checkpoints"]]


def load_flat(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return np.concatenate([v.ravel() for v in load_file(path).values()])


def method_trajlib(run: Path, args) -> dict:
    import trajlib
    from trajlib import hallmarks as H

    traj = trajlib.open_trajectory(run)
    st = trajlib.gram(traj, cache=False, progress=False, block_bytes=args.block_bytes)
    G = st["all"]
    return {"map": H.trajectory_map(G), "relative": H.relative_map(G), "update": H.update_map(G),
            "param_norm": H.param_norm(G), "step_norm": H.step_norm(G)}


def method_sklearn(run: Path, args) -> dict:
    from sklearn.metrics.pairwise import cosine_similarity

    X = np.stack([load_flat(f) for f in files(run)])
    return {"map": cosine_similarity(X)}


def method_naive(run: Path, args) -> dict:
    import torch

    fs = files(run)[: args.naive_T]
    C = np.eye(len(fs))
    for i in range(len(fs)):
        for j in range(i + 1, len(fs)):
            a, b = torch.from_numpy(load_flat(fs[i])), torch.from_numpy(load_flat(fs[j]))
            C[i, j] = C[j, i] = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return {"map": C}


def method_read(run: Path, args) -> dict:
    buf = None
    for f in files(run):
        size = f.stat().st_size
        if buf is None or len(buf) < size:
            buf = bytearray(size)
        with open(f, "rb", buffering=0) as fh:
            fh.readinto(buf)
    return {}


_A = []


def method_peak(run: Path, args) -> dict:
    import torch

    if not _A:
        _A.append(torch.randn(2048, 2048, dtype=torch.float64))
    torch.mm(_A[0], _A[0])
    return {}


PEAK_FLOPS = 2 * 2048**3

METHODS = {"trajlib": method_trajlib, "sklearn": method_sklearn, "naive": method_naive, "read": method_read,
           "peak": method_peak}


def child(args, methods=None) -> None:
    """Time ``methods[args.method]`` (default: this script's) on ``args.run`` in this child
    process: one warm-up, best of ``--repeat``, peak memory above the warm baseline; saves the
    result to ``args.out`` and prints the timing as JSON. pca_bench.py reuses it."""
    fn = (methods or METHODS)[args.method]
    run = Path(args.run)
    fn(run, args)  # warm-up: page cache, imports, allocator (and any cache the method keeps)
    base = status_mb("VmRSS")
    best, out = float("inf"), None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = fn(run, args)
        best = min(best, time.perf_counter() - t0)
    peak = status_mb("VmHWM")
    np.savez(args.out, **out)
    print(json.dumps({"seconds": best, "peak_mb": peak - base}))


def oracle(run: Path) -> dict:
    """Dense float64 reference: stack in float64, products in float64."""
    X = np.stack([load_flat(f).astype(np.float64) for f in files(run)])

    def cos(M):  # late float32 updates can round to exactly zero at large T: NaN, compared as such
        d = np.sqrt(np.diag(M))
        with np.errstate(invalid="ignore", divide="ignore"):
            return M / np.outer(d, d)
    D = X[1:] - X[0]
    U = X[1:] - X[:-1]
    return {"map": cos(X @ X.T), "relative": cos(D @ D.T), "update": cos(U @ U.T),
            "param_norm": np.linalg.norm(X, axis=1), "step_norm": np.linalg.norm(U, axis=1)}


def run_method(name: str, run: Path, args, T: int) -> dict:
    out = f"/tmp/trajlib-bench-{os.getpid()}-{name}.npz"
    cmd = [sys.executable, __file__, "--method", name, "--run", str(run), "--out", out,
           "--repeat", str({"naive": 1, "peak": 5}.get(name, args.repeat)), "--naive-T", str(args.naive_T),
           "--block-bytes", str(args.block_bytes)]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    got = dict(np.load(out))
    os.unlink(out)
    if name == "naive":
        pairs_done = args.naive_T * (args.naive_T - 1) / 2
        res["seconds"] *= T * (T - 1) / 2 / pairs_done
        res["note"] = f"timed on {pairs_done:.0f} pairs, scaled to {T * (T - 1) // 2}"
    if name == "peak":
        res["gflops"] = PEAK_FLOPS / res["seconds"] / 1e9
    res["got"] = got
    return res


def errors_vs(ref: dict, got: dict) -> dict:
    err = {}
    for k, v in got.items():
        r = ref[k][: len(v), : len(v)] if k == "map" and v.ndim == 2 else ref[k]
        with np.errstate(invalid="ignore", divide="ignore"):
            err[k] = float(np.nanmax(np.abs(v - r) / (np.abs(r) if "norm" in k else 1)))
    return err


def sweep_point(T: int, P: int, args) -> dict:
    """trajlib, sklearn and the bound at one T (the same bytes on disk as the main run); the peak
    is measured again just before, as the load of a shared machine drifts."""
    run = Path(f"{args.run}-T{T}")
    build_run(run, T, P)
    ref = oracle(run)
    peak = run_method("peak", run, args, T)["gflops"]
    row = {"T": T, "P": P, "peak_gflops": peak, "bound_seconds": T * (T + 1) * P / (peak * 1e9)}
    for name in ("trajlib", "sklearn"):
        r = run_method(name, run, args, T)
        row[f"{name}_seconds"] = r["seconds"]
        row[f"{name}_map_error"] = errors_vs(ref, r["got"])["map"]
    row["gflops"] = T * (T + 1) * P / row["trajlib_seconds"] / 1e9
    return row


def run_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments every benchmark on the synthetic run shares (pca_bench too): the run's
    shape and place, repeats, the read block, and the hidden ones of the timed child process."""
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--P", type=int, default=4 * 1024**2)
    p.add_argument("--run", default="/tmp/trajlib-gram-bench")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--block-bytes", type=int, default=8 << 20)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


PRODUCTS = ("syrk", "numpy matmul", "tiles", "square")


def product_seconds(product: str, T: int, total_bytes: int, workers: int = 2) -> float:
    """Seconds of the CPU product alone (no read, no conversion) over (T, sub) float64 row
    blocks totalling ``total_bytes``, split over ``workers`` threads as the engine splits a pass:
    "syrk" is the engine's (OpenBLAS dsyrk adding into G), "numpy matmul" the engine's before it
    (``R @ R.T`` into a scratch, then added), "tiles" torch row tiles of 64, "square" one addmm."""
    import threading

    import torch

    from trajlib.gram import blas
    from trajlib.gram.engine import COMPUTE_BYTES, _multiply
    from trajlib.gram.threads import single_threaded

    sub = max(256, COMPUTE_BYTES // (8 * T))
    Gs = [torch.zeros(T, T, dtype=torch.float64) for _ in range(workers)]
    Rs = [torch.randn(T, sub, dtype=torch.float64) for _ in range(workers)]
    scratch = [np.empty((T, T)) for _ in range(workers)]
    count = max(1, total_bytes // (8 * T * sub * workers))

    def work(w: int) -> None:
        R, G = Rs[w], Gs[w]
        with single_threaded():
            for _ in range(count):
                if product == "numpy matmul":
                    Rn = R.numpy()
                    np.matmul(Rn, Rn.T, out=scratch[w])
                    G.numpy().__iadd__(scratch[w])
                else:
                    _multiply(R, G, product)

    with blas.numpy_blas_single_threaded():
        pool = [threading.Thread(target=work, args=(w,)) for w in range(1, workers)]
        t0 = time.perf_counter()
        for th in pool:
            th.start()
        work(0)
        for th in pool:
            th.join()
        return time.perf_counter() - t0


def products(Ts: list[int], peak_gflops: float, total_bytes: int = 256 << 20, repeat: int = 3) -> list[dict]:
    """Best-of-``repeat`` seconds of each product at each T, and the fraction of the fp64 peak
    bound over the T(T+1)·columns flops of a lower triangle (the square's extra half counts
    against it)."""
    from trajlib.gram import blas

    rows = []
    for T in Ts:
        cols = total_bytes // (8 * T)
        bound = T * (T + 1) * cols / (peak_gflops * 1e9)
        for product in PRODUCTS:
            if product in ("syrk", "numpy matmul") and not blas.has_syrk():
                continue
            best = min(product_seconds(product, T, total_bytes) for _ in range(repeat))
            rows.append({"T": T, "product": product, "seconds": best, "of_bound": bound / best})
    return rows


def main() -> None:
    p = run_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--naive-T", type=int, default=12)
    p.add_argument("--sweep", type=int, nargs="*", default=[256, 1024],
                   help="more T at the same bytes on disk (trajlib, sklearn and the bound)")
    p.add_argument("--save", help="write the results as JSON (rendered on the book's methods page)")
    p.add_argument("--products", type=int, nargs="+", metavar="T",
                   help="only the CPU product at these T (no read, no conversion), each way the engine could "
                        "take it; with --save, added to that file")
    args = p.parse_args()
    if args.method:
        return child(args)
    if args.products:
        peak = run_method("peak", Path(args.run), args, args.T)["gflops"]
        rows = products(args.products, peak)
        print(f"the CPU product alone, 256 MiB of float64 rows, 2 worker threads; fp64 peak {peak:.1f} GFLOP/s")
        print(f"{'T':>5s} {'product':>13s} {'seconds':>8s} {'of the bound':>12s}")
        for r in rows:
            print(f"{r['T']:5d} {r['product']:>13s} {r['seconds']:8.3f} {r['of_bound']:11.0%}")
        if args.save:
            doc = json.loads(Path(args.save).read_text()) if Path(args.save).is_file() else {}
            doc["products"] = {"peak_gflops": peak, "date": time.strftime("%Y-%m-%d"), "rows": rows}
            Path(args.save).write_text(json.dumps(doc, indent=1))
        return
    run = Path(args.run)
    build_run(run, args.T, args.P)
    nbytes = sum(f.stat().st_size for f in files(run))
    print(f"run: {run}  T={args.T}  P={args.P:,}  {nbytes / 1e9:.2f} GB on disk  cores={os.cpu_count()}")
    ref = oracle(run)
    results = {}
    for name in ("peak", "trajlib", "sklearn", "naive", "read"):
        res = run_method(name, run, args, args.T)
        got = res.pop("got")
        results[name] = dict(res, errors=errors_vs(ref, got))
    peak = results.pop("peak")["gflops"]
    flops = args.T * (args.T + 1) * args.P
    bound = flops / (peak * 1e9)
    t = results["trajlib"]["seconds"]
    print(f"fp64 GEMM peak (2048² torch.mm, {os.cpu_count()} cores): {peak:.1f} GFLOP/s; the lower-triangle "
          f"Gram needs T(T+1)P = {flops / 1e9:.1f} GFLOP: bound {bound:.3f} s")
    print(f"{'method':10s} {'seconds':>9s} {'GB/s':>6s} {'vs trajlib':>10s} {'peak MB':>8s} {'peak/run':>8s}  max error vs fp64")
    for name, r in results.items():
        gbs = nbytes / r["seconds"] / 1e9
        errs = ", ".join(f"{k} {v:.1e}" for k, v in r["errors"].items()) or "-"
        print(f"{name:10s} {r['seconds']:9.3f} {gbs:6.2f} {r['seconds'] / t:9.1f}x {r['peak_mb']:8.0f} "
              f"{r['peak_mb'] * 1e6 / nbytes:8.1%}  {errs}  {r.get('note', '')}")
    print(f"trajlib {t:.3f} s: {t / bound:.2f}x the fp64 peak bound ({flops / t / 1e9:.1f} GFLOP/s of {peak:.1f}); "
          f"vs (a) sklearn: {results['sklearn']['seconds'] / t:.2f}x faster; vs (b) naive: "
          f"{results['naive']['seconds'] / t:.1f}x; reads at {results['read']['seconds'] / t:.0%} of the plain-read rate")
    sweep = [{"T": args.T, "P": args.P, "peak_gflops": peak, "bound_seconds": bound, "trajlib_seconds": t,
              "sklearn_seconds": results["sklearn"]["seconds"], "gflops": flops / t / 1e9,
              "trajlib_map_error": results["trajlib"]["errors"]["map"],
              "sklearn_map_error": results["sklearn"]["errors"]["map"]}]
    for T in args.sweep:
        sweep.append(sweep_point(T, args.T * args.P // T, args))
    if args.sweep:
        print(f"{'T':>5s} {'P':>10s} {'peak GF/s':>9s} {'trajlib s':>9s} {'× bound':>8s} {'GFLOP/s':>8s} {'sklearn s':>9s} "
              f"{'sklearn/trajlib':>15s}  trajlib time / T₀'s")
        for r in sweep:
            print(f"{r['T']:5d} {r['P']:10,d} {r['peak_gflops']:9.1f} {r['trajlib_seconds']:9.3f} {r['trajlib_seconds'] / r['bound_seconds']:7.2f}x "
                  f"{r['gflops']:8.1f} {r['sklearn_seconds']:9.3f} {r['sklearn_seconds'] / r['trajlib_seconds']:14.2f}x  "
                  f"{r['trajlib_seconds'] / t:.2f} (T/T₀ = {r['T'] / args.T:g})")
    if args.save:
        import platform
        import time as _time

        doc = {"benchmark": "gram_bench", "T": args.T, "P": args.P, "run_bytes": nbytes, "cores": os.cpu_count(),
               "machine": platform.machine(), "date": _time.strftime("%Y-%m-%d"), "peak_gflops": peak,
               "bound_seconds": bound, "rows": [{"method": k, **v} for k, v in results.items()], "sweep": sweep}
        old = json.loads(Path(args.save).read_text()) if Path(args.save).is_file() else {}
        if "products" in old:  # measured by --products, kept
            doc["products"] = old["products"]
        Path(args.save).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
