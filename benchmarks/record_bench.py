"""How much recording every step adds to the step time of a small CNN training loop.

    python benchmarks/record_bench.py [--steps 300] [--width 16]

Trains notebook 01's BatchNorm CNN on digits batches, alternating runs without and with a
Recorder saving every step (best of ``--repeat`` each, one process), and prints the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import trajlib
from trajlib.paper.data import digits
from trajlib.paper.models import SmallCNN


def loop(steps: int, width: int, run_dir: str | None, batches) -> float:
    torch.manual_seed(0)
    model = SmallCNN(width, in_channels=batches[0][0].shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rec = trajlib.Recorder(model, run_dir, every=1, optimizer=opt) if run_dir else None
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
    return elapsed / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--input", choices=("digits", "cifar"), default="digits",
                   help="digits: 1×8×8, batch 64 (the notebooks; the cheapest step, so the worst case); "
                        "cifar: 3×32×32 random images, batch 128")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--save", help="append the result as JSON to this file (the book's methods page)")
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
    base, rec = [], []
    for _ in range(args.repeat):
        base.append(loop(args.steps, args.width, None, batches))
        tmp = tempfile.mkdtemp(prefix="trajlib-record-bench-")
        rec.append(loop(args.steps, args.width, tmp, batches))
        n_ckpt = len(list(Path(tmp).glob("ckpt-*.safetensors")))
        shutil.rmtree(tmp)
    params = sum(p.numel() for p in SmallCNN(args.width, in_channels=batches[0][0].shape[1]).parameters())
    b, r = min(base), min(rec)
    ratios = sorted(x / y for x, y in zip(rec, base))
    print(f"SmallCNN width {args.width} on {args.input} batches, {torch.get_num_threads()} torch threads: "
          f"{params:,} parameters, {args.steps} steps, {n_ckpt} checkpoints per run")
    print(f"step time without recording: {b * 1e3:.2f} ms   recording every step: {r * 1e3:.2f} ms")
    print(f"recording adds {100 * (r / b - 1):+.1f}% to the step time (best of {args.repeat}); "
          f"median of paired runs {100 * (ratios[len(ratios) // 2] - 1):+.1f}%")
    if args.save:
        import json
        import os
        import time as _time

        path = Path(args.save)
        doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "record_bench", "rows": []}
        doc["rows"] = [r for r in doc["rows"] if (r["input"], r["threads"]) != (args.input, torch.get_num_threads())]
        doc["rows"].append({"input": args.input, "threads": torch.get_num_threads(), "params": params,
                            "base_ms": 1e3 * b, "record_ms": 1e3 * r, "overhead_best": r / b - 1,
                            "overhead_median": ratios[len(ratios) // 2] - 1, "cores": os.cpu_count(),
                            "date": _time.strftime("%Y-%m-%d")})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
