"""Time trajectory PCA (trajlib) against stack + scikit-learn PCA on the gram benchmark's run.

    python benchmarks/pca_bench.py [--T 64] [--P 4000000] [--run DIR]

The run is the one ``gram_bench.py`` builds (T checkpoints of P float32 parameters). Each method
runs in its own subprocess (its peak memory is its own), best of ``--repeat`` with a warm page
cache:

* trajlib: one streamed Gram pass, ``trajectory_pca`` (coordinates and explained variance from
  the Gram), and the directions pass writing the two P-dimensional directions beside the run;
* trajlib, Gram cached: the same when the Gram is already beside the run (only the directions
  pass reads the checkpoints);
* sklearn: what tomgoldstein/loss-landscape does: stack every flattened checkpoint (float32, as
  its ``matrix.append(d.numpy())``) and ``PCA(n_components=2).fit_transform``.

Printed: seconds, ratio, peak resident memory above the process's baseline (MB and as a share of
the run's bytes), and the agreement of coordinates and explained-variance ratios between trajlib
(float64) and sklearn (float32 stack). No wall-clock bound is asserted; the machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gram_bench import build_run, child as timed_child, files, load_flat, run_arguments  # noqa: E402


def method_trajlib(run: Path, args, cached: bool = False) -> dict:
    import trajlib
    from trajlib.pca import directions, trajectory_pca

    traj = trajlib.open_trajectory(run)
    stats = trajlib.gram(traj, cache=cached, progress=False, block_bytes=args.block_bytes)
    p = trajectory_pca(stats, k=2)
    directions(traj, p, path=run / "bench-pca.safetensors", block_bytes=args.block_bytes, progress=False, cache=False)
    return {"coords": p.coords, "ratio": p.explained_variance_ratio}


def method_cached(run: Path, args) -> dict:
    return method_trajlib(run, args, cached=True)


def method_sklearn(run: Path, args) -> dict:
    from sklearn.decomposition import PCA

    X = np.stack([load_flat(f) for f in files(run)])  # float32, as loss-landscape stacks it
    pca = PCA(n_components=2)
    Z = pca.fit_transform(X)
    return {"coords": Z.astype(np.float64), "ratio": pca.explained_variance_ratio_.astype(np.float64),
            "components": pca.components_[:, :4096].astype(np.float64)}


METHODS = {"trajlib": method_trajlib, "trajlib_cached_gram": method_cached, "sklearn": method_sklearn}


def main() -> None:
    p = run_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = p.parse_args()
    if args.method:
        return timed_child(args, METHODS)
    run = Path(args.run)
    build_run(run, args.T, args.P)
    nbytes = sum(f.stat().st_size for f in files(run))
    print(f"run: {run}  T={args.T}  P={args.P:,}  {nbytes / 1e9:.2f} GB on disk  cores={os.cpu_count()}")
    results, outs = {}, {}
    for name in METHODS:
        out = f"/tmp/trajlib-pca-bench-{name}.npz"
        cmd = [sys.executable, __file__, "--method", name, "--run", str(run), "--out", out,
               "--repeat", str(args.repeat), "--block-bytes", str(args.block_bytes)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[name], outs[name] = json.loads(res), dict(np.load(out))
    sk, tl = outs["sklearn"], outs["trajlib"]
    sign = np.sign((sk["coords"] * tl["coords"]).sum(0))
    coord_err = float(np.abs(tl["coords"] - sk["coords"] * sign).max() / np.abs(tl["coords"]).max())
    ratio_err = float(np.abs(tl["ratio"] - sk["ratio"]).max())
    t = results["trajlib"]["seconds"]
    print(f"{'method':20s} {'seconds':>9s} {'vs trajlib':>10s} {'peak MB':>8s} {'peak/run':>8s}")
    for name, r in results.items():
        print(f"{name:20s} {r['seconds']:9.3f} {r['seconds'] / t:9.2f}x {r['peak_mb']:8.0f} {r['peak_mb'] * 1e6 / nbytes:8.1%}")
    print(f"trajlib vs stack + sklearn PCA: {results['sklearn']['seconds'] / t:.2f}x the speed, peak memory "
          f"{results['trajlib']['peak_mb']:.0f} MB vs {results['sklearn']['peak_mb']:.0f} MB "
          f"({results['sklearn']['peak_mb'] / max(results['trajlib']['peak_mb'], 1e-9):.0f}x less); "
          f"with the Gram cached {results['sklearn']['seconds'] / results['trajlib_cached_gram']['seconds']:.2f}x; "
          f"agreement: coordinates {coord_err:.1e} (relative), explained-variance ratios {ratio_err:.1e}")


if __name__ == "__main__":
    main()
