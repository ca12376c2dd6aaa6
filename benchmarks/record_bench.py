"""How much recording every step adds to the step time of a small CNN training loop.

    python benchmarks/record_bench.py [--steps 300] [--width 16] [--policies interval always never]

Trains notebook 01's BatchNorm CNN on digits batches, alternating runs without a Recorder and
with one saving every step under each durability policy (``Recorder(fsync=...)``; best of
``--repeat`` each, one process), and prints each policy's added step time. The step time is the
training loop's own (``close`` is timed apart: it waits for the last group's fsync).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import trajlib
from trajlib.paper.data import digits
from trajlib.paper.models import SmallCNN


def loop(steps: int, width: int, run_dir: str | None, batches, policy: str = "interval") -> tuple[float, float]:
    """(seconds a step, seconds ``close`` took)."""
    torch.manual_seed(0)
    model = SmallCNN(width, in_channels=batches[0][0].shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rec = trajlib.Recorder(model, run_dir, every=1, optimizer=opt, fsync=policy) if run_dir else None
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = batches[step % len(batches)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec:
            rec.step(step)
    elapsed = time.perf_counter() - t0  # training time as the loop sees it
    if rec:
        rec.close()
    return elapsed / steps, time.perf_counter() - t0 - elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--input", choices=("digits", "cifar"), default="digits",
                   help="digits: 1×8×8, batch 64 (the notebooks; the cheapest step, so the worst case); "
                        "cifar: 3×32×32 random images, batch 128")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--policies", nargs="+", default=["interval", "always", "never"],
                   help="Recorder(fsync=...) durability policies to time")
    p.add_argument("--save", help="add the results as JSON to this file (the book's methods page); rows of the "
                                  "same input and thread count are replaced")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.input == "digits":
        data = digits()
        batches = [(data.x_train[i: i + 64], data.y_train[i: i + 64]) for i in range(0, 1280, 64)]
    else:
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g))
                   for _ in range(8)]
    base, rec, close = [], {p: [] for p in args.policies}, {p: [] for p in args.policies}
    for _ in range(args.repeat):  # interleaved, so drifting machine load hits every variant alike
        base.append(loop(args.steps, args.width, None, batches)[0])
        for policy in args.policies:
            tmp = tempfile.mkdtemp(prefix="trajlib-record-bench-")
            step_s, close_s = loop(args.steps, args.width, tmp, batches, policy)
            rec[policy].append(step_s)
            close[policy].append(close_s)
            n_ckpt = len(list(Path(tmp).glob("ckpt-*.safetensors")))
            shutil.rmtree(tmp)
    params = sum(p.numel() for p in SmallCNN(args.width, in_channels=batches[0][0].shape[1]).parameters())
    b = min(base)
    print(f"SmallCNN width {args.width} on {args.input} batches, {torch.get_num_threads()} torch threads: "
          f"{params:,} parameters, {args.steps} steps, {n_ckpt} checkpoints per run")
    print(f"step time without recording: {b * 1e3:.2f} ms (best of {args.repeat})")
    rows = []
    for policy in args.policies:
        r = min(rec[policy])
        ratios = sorted(x / y for x, y in zip(rec[policy], base))
        med = ratios[len(ratios) // 2] - 1
        print(f"fsync={policy!r:11s} recording every step: {r * 1e3:.2f} ms, adds {100 * (r / b - 1):+.1f}% "
              f"(best of {args.repeat}); median of paired runs {100 * med:+.1f}%; close {1e3 * min(close[policy]):.0f} ms")
        rows.append({"input": args.input, "threads": torch.get_num_threads(), "params": params, "policy": policy,
                     "base_ms": 1e3 * b, "record_ms": 1e3 * r, "overhead_best": r / b - 1, "overhead_median": med,
                     "close_ms": 1e3 * min(close[policy]), "steps": args.steps, "cores": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%d")})
    if args.save:
        path = Path(args.save)
        doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "record_bench", "rows": []}
        key = (args.input, torch.get_num_threads())
        doc["rows"] = [r for r in doc["rows"] if (r["input"], r["threads"]) != key] + rows
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
