"""How much recording every step adds to the step time of a training loop.

    python benchmarks/record_bench.py [--steps 300] [--width 16] [--policies interval always never]
    python benchmarks/record_bench.py --step-level [--device cuda]

Default: trains notebook 01's BatchNorm CNN on digits batches, alternating runs without a Recorder
and with one saving every step under each durability policy (``Recorder(fsync=...)``; best and
median of ``--repeat`` paired runs, one process), and prints each policy's added step time: in the
loop, and with ``close`` (the writer's backlog and the last group's fsync) spread over the steps.
Against the machine's own limit: in the folder the runs go to (``--dir``; default the system's
temporary folder), the file system's own CPU cost of one checkpoint file alone (create, write,
rename, fsync) and of one group commit, before and after the runs; and the writer thread's CPU
per checkpoint in the real runs, so the Recorder's own share (hashing, bookkeeping) reads as
the difference.
``--step-level``: the overhead of exact step statistics (``step_stats=True``), of a k = 1024
sketch every step (``sketch=1024``) and of both, against the plain loop, on a 1.07 M-parameter
MLP (digits, batch 64: a fast step) and notebook 04's width-256 GPT-NeoX (6 layers, batch 32 ×
64 characters), all modes interleaved in one process; also the sketch's time and memory per step
at growing P with the linear extrapolation to P = 1e9.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F

import trajlib
from trajlib.manifest import atomic_write, fsync_dir
from trajlib.record import select_tensors
from trajlib.writer import SnapshotLayout
from trajlib.paper.data import digits
from trajlib.paper.models import SmallCNN


def thread_cpu_s(thread) -> float:
    """CPU seconds (user + system) a running ``threading.Thread`` of this process has used."""
    assert thread.is_alive(), "a finished thread's CPU clock is gone"
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def file_cost(folder: str, nbytes: int, n: int = 300) -> dict:
    """The file system's own CPU cost (µs) of one checkpoint-sized file in a new folder inside
    ``folder``, alone: creating it (``O_CREAT | O_EXCL``), writing ``nbytes``, renaming it, and
    fsyncing it; and of one group commit (a directory fsync, then a manifest of ``n`` entries
    written atomically: created, fsynced, renamed over the last one, directory fsynced). Deletes
    nothing but the replaced manifests (the caller removes ``folder``): see :func:`main` on why."""
    d = tempfile.mkdtemp(prefix="file-cost-", dir=folder)
    data, cost = os.urandom(nbytes), {"create": 0.0, "write": 0.0, "rename": 0.0, "fsync": 0.0}
    for i in range(n):
        t0 = time.thread_time()
        fd = os.open(f"{d}/.{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        t1 = time.thread_time()
        os.write(fd, data)
        os.close(fd)
        t2 = time.thread_time()
        os.replace(f"{d}/.{i}.tmp", f"{d}/{i}")
        t3 = time.thread_time()
        cost["create"] += t1 - t0
        cost["write"] += t2 - t1
        cost["rename"] += t3 - t2
    for i in range(n):  # like the "interval" policy: the group's files fsynced after writing
        t0 = time.thread_time()
        fd = os.open(f"{d}/{i}", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        cost["fsync"] += time.thread_time() - t0
    manifest = os.urandom(200 * n)  # a commit as the Recorder makes one: a manifest of n entries
    t0 = time.thread_time()
    for _ in range(10):
        fsync_dir(Path(d))
        atomic_write(Path(d) / "manifest.json", manifest)
    return {**{k: 1e6 * v / n for k, v in cost.items()}, "commit": 1e6 * (time.thread_time() - t0) / 10}


def file_system(folder: str | None) -> str:
    """The type of the file system holding ``folder`` (from ``/proc/mounts``; "?" elsewhere)."""
    path, best = os.path.realpath(folder or tempfile.gettempdir()), ("", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mount, kind = line.split()[1:3]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):  # the last of stacked mounts is the visible one
                best = (mount, kind)
    except OSError:
        pass
    return best[1]


def loop(steps: int, width: int, run_dir: str | None, batches, policy: str = "interval") -> tuple[float, float, float]:
    """(seconds a step, seconds ``close`` took, the writer thread's CPU seconds)."""
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
    writer_s = 0.0
    if rec:
        rec.flush()  # every checkpoint on disk; the writer thread is still alive to be read
        writer_s = thread_cpu_s(rec._writer._thread)
        rec.close()
    return elapsed / steps, time.perf_counter() - t0 - elapsed, writer_s


# The writer's file work alone (sha256, create, write, rename of one checkpoint-sized file) every
# `period` seconds until stdin closes or `stop` is set; stdlib only, so a child process runs it
# without importing torch. `batch`: SCHED_BATCH (its wake-ups never preempt a running thread).
FILE_WORK = """
import hashlib, os, select, sys, time
def file_work(folder, nbytes, period, batch, stop=None):
    os.setpriority(os.PRIO_PROCESS, 0, 10)  # the calling thread only, on Linux; as the Recorder's writer
    if batch:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    data, i = os.urandom(nbytes), 0
    while True:  # at least one file, however late this worker got the CPU
        hashlib.sha256(data).hexdigest()
        fd = os.open(f"{folder}/.{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        os.replace(f"{folder}/.{i}.tmp", f"{folder}/{i}")
        i += 1
        if stop.is_set() if stop else select.select([sys.stdin], [], [], 0)[0]:  # a line or EOF: stop
            break
        time.sleep(period)
"""


def contention(args, batches, folder: str, nbytes: int) -> list[dict]:
    """The training loop's step time while the writer's file work (FILE_WORK, one file per
    step's worth of time) runs beside it: from a thread of the training process or from a child
    process, each at nice 10 with and without SCHED_BATCH. Paired with the plain loop, best and
    median of ``--repeat``."""
    import subprocess
    import sys
    import threading

    namespace: dict = {}
    exec(FILE_WORK, namespace)
    base = [loop(args.steps, args.width, None, batches)[0] for _ in range(2)]
    period = min(base)  # one file per plain step: the writer's pace at every-step recording
    variants = [(where, batch) for where in ("thread", "process") for batch in (False, True)]
    times: dict = {v: [] for v in variants}
    plain, files = [], {v: [] for v in variants}
    for _ in range(args.repeat):
        plain.append(loop(args.steps, args.width, None, batches)[0])
        for where, batch in variants:
            d = tempfile.mkdtemp(prefix=f"{where}-", dir=folder)
            if where == "thread":
                stop = threading.Event()
                worker = threading.Thread(target=namespace["file_work"], args=(d, nbytes, period, batch, stop))
                worker.start()
            else:
                code = FILE_WORK + f"\nfile_work({d!r}, {nbytes}, {period!r}, {batch})\n"
                child = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.PIPE, text=True)
                time.sleep(0.2)  # started and writing before the loop is timed
            try:
                start = len(os.listdir(d))
                times[(where, batch)].append(loop(args.steps, args.width, None, batches)[0])
                files[(where, batch)].append(len(os.listdir(d)) - start)
            finally:  # the worker stops even if training fails
                if where == "thread":
                    stop.set()
                    worker.join()
                else:
                    child.stdin.close()  # end of file: the child stops
                    child.wait()
    rows = []
    print(f"{torch.get_num_threads()} torch threads; {nbytes:,}-byte files every {1e3 * period:.2f} ms (one plain step)")
    for (where, batch), t in times.items():
        med = median([x / y for x, y in zip(t, plain)]) - 1
        kept_up = median(files[(where, batch)]) / args.steps
        label = f"{where}, nice 10" + (" + SCHED_BATCH" if batch else "")
        print(f"file work from a {label:27s}: step {1e3 * min(t):.2f} ms, adds {100 * (min(t) / min(plain) - 1):+.1f}% "
              f"(best of {args.repeat}); median of paired runs {100 * med:+.1f}%; {kept_up:.2f} files per step, "
              f"so {100 * med / max(kept_up, 1e-9):+.1f}% per file a step")
        rows.append({"where": where, "sched_batch": batch, "overhead_best": min(t) / min(plain) - 1,
                     "overhead_median": med, "files_per_step": kept_up,
                     "overhead_per_file_per_step": med / max(kept_up, 1e-9)})
    return rows


STEP_MODES = {"plain": {}, "step_stats": {"step_stats": True}, "sketch": {"sketch": 1024},
              "both": {"step_stats": True, "sketch": 1024}}


def step_level_models(device):
    """(name, model, batch maker) for the step-level benchmark."""
    from trajlib.paper.data import char_corpus
    from trajlib.paper.models import MLP, tiny_gpt_neox

    data = digits()
    mlp_batches = [(data.x_train[i: i + 64].to(device), data.y_train[i: i + 64].to(device)) for i in range(0, 1280, 64)]
    corpus = char_corpus()
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(corpus.train) - 65, (8, 32), generator=g)
    lm_batches = [torch.stack([corpus.train[s: s + 65] for s in row.tolist()]).to(device) for row in starts]

    def mlp_loss(model, step):
        x, y = mlp_batches[step % len(mlp_batches)]
        return F.cross_entropy(model(x), y)

    def lm_loss(model, step):
        w = lm_batches[step % len(lm_batches)]
        logits = model(w[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))

    return [("mlp-1.07M", lambda: MLP(1000), mlp_loss),
            ("gpt-neox-w256", lambda: tiny_gpt_neox(vocab_size=corpus.vocab_size, width=256, layers=6, heads=4), lm_loss)]


def step_loop(make, loss_fn, steps, mode, device) -> float:
    torch.manual_seed(0)
    model = make().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    tmp = tempfile.mkdtemp(prefix="trajlib-step-bench-")
    rec = trajlib.Recorder(model, tmp, every=10**9, **STEP_MODES[mode]) if STEP_MODES[mode] else None
    for step in range(1, 3):  # warm-up
        loss = loss_fn(model, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for step in range(3, steps + 3):
        loss = loss_fn(model, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec:
            rec.step(step)
    sync()
    elapsed = time.perf_counter() - t0
    if rec:
        rec.close()
    shutil.rmtree(tmp)
    return elapsed / steps


def sketch_scaling(device) -> list[dict]:
    """Time and extra memory of one k = 1024 sketch of a flat parameter vector at growing P."""
    from trajlib.sketch import CountSketch
    from trajlib.steps import LiveLayout, StepStats

    rows = []
    for P in (1 << 22, 1 << 24, 1 << 25):
        theta = torch.nn.Parameter(torch.randn(P, device=device))
        for cache in ((True, False) if device.type == "cpu" else (False,)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            ss = StepStats(LiveLayout({"theta": (theta, "parameter")}), groups=None, sketch=CountSketch(1024),
                           cache_hash=cache)
            extra = (torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" else \
                (8 * P if cache else 0) + 8 * 4 * ss.plan.max_cols
            ss.update(0, sketch=True)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            for i in range(3):
                ss.update(i, stats=False, sketch=True)
            sync()
            rows.append({"P": P, "cache_hash": cache, "ms": 1e3 * (time.perf_counter() - t0) / 3, "extra_bytes": int(extra)})
            del ss
    return rows


def sketch_errors(ks=(64, 256, 1024, 4096), seeds=5, steps=200) -> list[dict]:
    """Error of sketched maps against the exact maps of an MLP (width 300, 113 k parameters) recorded at
    every step: per k, the RMS and the largest error over the off-diagonal entries of the
    trajectory map and the update map, median and worst over sketch seeds, and sqrt(2/k)."""
    import numpy as np

    from trajlib import hallmarks as H
    from trajlib.paper.models import MLP
    from trajlib.sketch import CountSketch

    data = digits()
    torch.manual_seed(0)
    model = MLP(300)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    flat = lambda: torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double().numpy()  # noqa: E731
    X = [flat()]
    for step in range(steps):
        i = (64 * step) % 1280
        loss = F.cross_entropy(model(data.x_train[i: i + 64]), data.y_train[i: i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        X.append(flat())
    X = np.stack(X)
    G = H.gram_from_checkpoints(X)
    exact = {m: getattr(H, m)(G) for m in ("trajectory_map", "update_map")}
    off = ~np.eye(len(X), dtype=bool)
    rows = []
    for k in ks:
        errs = {m: [] for m in exact}
        for seed in range(seeds):
            cs = CountSketch(k, seed=seed)
            idx = cs.index(torch.arange(X.shape[1]))  # hashed once, applied to every step
            acc = torch.zeros(len(X), 2 * k, dtype=torch.float64).scatter_add_(
                1, idx.expand(len(X), -1), torch.from_numpy(X))
            Gs = H.gram_from_checkpoints(cs.fold(acc).numpy())
            for m in exact:
                E = getattr(H, m)(Gs) - exact[m]
                E = E[off[: len(E), : len(E)]]
                errs[m].append((float(np.sqrt(np.mean(E ** 2))), float(np.abs(E).max())))
        row = {"k": k, "bound": float(np.sqrt(2 / k)), "P": int(X.shape[1]), "T": len(X), "seeds": seeds}
        for m, e in errs.items():
            rms, mx = np.array(e).T
            row[m] = {"rms_median": float(np.median(rms)), "rms_worst": float(rms.max()),
                      "max_median": float(np.median(mx)), "max_worst": float(mx.max())}
        rows.append(row)
        print(f"k={k}: bound {row['bound']:.4f}; " + "; ".join(
            f"{m} RMS {row[m]['rms_median']:.4f} (worst {row[m]['rms_worst']:.4f}), max {row[m]['max_worst']:.4f}"
            for m in exact))
    return rows


def step_level(args) -> dict:
    device = torch.device(args.device)
    out = {"benchmark": "record_bench --step-level", "device": str(device), "threads": torch.get_num_threads(),
           "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "models": {}}
    for name, make, loss_fn in step_level_models(device):
        steps = args.steps if name.startswith("mlp") else max(5, args.steps // 20)
        times = {m: [] for m in STEP_MODES}
        for _ in range(args.repeat):
            for mode in STEP_MODES:
                times[mode].append(step_loop(make, loss_fn, steps, mode, device))
        params = sum(p.numel() for p in make().parameters())
        base = times["plain"]
        row = {"params": params, "steps": steps, "base_ms": 1e3 * min(base)}
        for mode in ("step_stats", "sketch", "both"):
            paired = [x / y for x, y in zip(times[mode], base)]
            row[mode] = {"ms": 1e3 * min(times[mode]), "overhead_best": min(times[mode]) / min(base) - 1,
                         "overhead_median": median(paired) - 1}
        out["models"][name] = row
        print(f"{name}: {params:,} parameters, plain step {row['base_ms']:.2f} ms on {device}; overhead "
              + "; ".join(f"{m} {100 * row[m]['overhead_best']:+.1f}% (median {100 * row[m]['overhead_median']:+.1f}%)"
                          for m in ("step_stats", "sketch", "both")))
    out["sketch_scaling"] = rows = sketch_scaling(device)
    for r in rows:
        print(f"sketch P={r['P']:,} cache_hash={r['cache_hash']}: {r['ms']:.2f} ms, extra {r['extra_bytes'] / 2**20:.1f} MiB")
    last = [r for r in rows if r["P"] == rows[-1]["P"]]
    out["extrapolated_1e9"] = [{"cache_hash": r["cache_hash"], "ms": r["ms"] * 1e9 / r["P"],
                                "extra_bytes": r["extra_bytes"] if not r["cache_hash"] else 8e9 + r["extra_bytes"] - 8 * r["P"]}
                               for r in last]
    for r in out["extrapolated_1e9"]:
        print(f"P = 1e9 (linear in P): cache_hash={r['cache_hash']}: {r['ms'] / 1e3:.2f} s per sketched step, "
              f"extra {r['extra_bytes'] / 2**20:.0f} MiB")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--input", choices=("digits", "cifar"), default="digits",
                   help="digits: 1×8×8, batch 64 (the notebooks; the cheapest step, so the worst case); "
                        "cifar: 3×32×32 random images, batch 128")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--dir", help="folder the benchmark's runs are written in (default: the system's temporary "
                                 "folder); the file system's own cost per file is measured there first")
    p.add_argument("--policies", nargs="+", default=["interval", "always", "never"],
                   help="Recorder(fsync=...) durability policies to time")
    p.add_argument("--save", help="add the results as JSON to this file (the book's methods page); rows of the "
                                  "same input, thread count and file system are replaced")
    p.add_argument("--step-level", action="store_true", help="step statistics and sketch overheads")
    p.add_argument("--contention", action="store_true",
                   help="the writer's file work alone, from a thread of the training process or from a child "
                        "process, with and without SCHED_BATCH: what running it in-process costs")
    p.add_argument("--device", default="cpu", help="--step-level: cpu or cuda")
    p.add_argument("--sketch-errors", action="store_true",
                   help="sketched-map errors against exact every-step maps at several k (added to --save's JSON)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sketch_errors:
        rows = sketch_errors()
        if args.save:
            path = Path(args.save)
            doc = json.loads(path.read_text()) if path.is_file() else {}
            doc["sketch_errors"] = rows
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc, indent=1))
        return
    if args.step_level:
        doc = step_level(args)
        if args.save:
            path = Path(args.save)
            old = json.loads(path.read_text()) if path.is_file() else {}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**old, **doc}, indent=1))  # keeps --sketch-errors' rows
        return
    if args.input == "digits":
        data = digits()
        batches = [(data.x_train[i: i + 64], data.y_train[i: i + 64]) for i in range(0, 1280, 64)]
    else:
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g))
                   for _ in range(8)]
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
    fs = file_system(args.dir)
    model = SmallCNN(args.width, in_channels=batches[0][0].shape[1])
    params = sum(p.numel() for p in model.parameters())
    layout_bytes = SnapshotLayout({n: t for n, (t, _) in select_tensors(model).items()}).file_bytes  # a Recorder's file
    # Every run stays on disk until the end: a journal-less ext4 skips the inodes of files deleted
    # in the last 60-300 s when it creates one, so deleting runs as we go would make the next
    # runs' files cost far more to create than a training run's ever do (measured here: ~20 µs
    # on a quiet file system, up to ~900 µs after deleting a few thousand files).
    parent = tempfile.mkdtemp(prefix="trajlib-record-bench-", dir=args.dir)
    try:
        if args.contention:
            rows = contention(args, batches, parent, layout_bytes)
            if args.save:
                path = Path(args.save)
                doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "record_bench", "rows": []}
                run = {"threads": torch.get_num_threads(), "file_system": fs, "params": params, "bytes": layout_bytes,
                       "steps": args.steps, "repeat": args.repeat, "date": time.strftime("%Y-%m-%d"), "rows": rows}
                doc["contention"] = [c for c in doc.get("contention", [])
                                     if (c["threads"], c["file_system"]) != (run["threads"], fs)] + [run]
                path.write_text(json.dumps(doc, indent=1))
            return
        floor = file_cost(parent, layout_bytes)
        base, rec, close, writer = [], *({p: [] for p in args.policies} for _ in range(3))
        for _ in range(args.repeat):  # interleaved, so drifting machine load hits every variant alike
            base.append(loop(args.steps, args.width, None, batches)[0])
            for policy in args.policies:
                run = tempfile.mkdtemp(prefix=f"{policy}-", dir=parent)
                step_s, close_s, writer_s = loop(args.steps, args.width, run, batches, policy)
                rec[policy].append(step_s)
                close[policy].append(close_s)
                n_ckpt = len(list(Path(run).glob("ckpt-*.safetensors")))
                writer[policy].append(writer_s / n_ckpt)
        floor_after = file_cost(parent, layout_bytes)  # the runs' own files and manifests changed it?
    finally:
        shutil.rmtree(parent)
    b = min(base)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"SmallCNN width {args.width} on {args.input} batches, {torch.get_num_threads()} torch threads: "
          f"{params:,} parameters, {args.steps} steps, {n_ckpt} checkpoints of {layout_bytes:,} bytes per run")
    for when, c in (("before the runs", floor), ("after them", floor_after)):
        print(f"the file system ({fs}) alone, {when}: CPU per checkpoint-sized file: create {c['create']:.0f} µs, "
              f"write {c['write']:.0f} µs, rename {c['rename']:.0f} µs, fsync {c['fsync']:.0f} µs; "
              f"a group commit {c['commit']:.0f} µs")
    print(f"step time without recording: {b * 1e3:.2f} ms (best of {args.repeat})")
    rows = []
    for policy in args.policies:
        r = min(rec[policy])
        med = median([x / y for x, y in zip(rec[policy], base)]) - 1
        with_close = median([(x + c / args.steps) / y for x, c, y in zip(rec[policy], close[policy], base)]) - 1
        w_us = 1e6 * median(writer[policy])
        share = w_us / (1e6 * median(base) * cores)  # of every core's time: a floor when training fills them
        fs_us, fs_after_us = (c["create"] + c["write"] + c["rename"] + (c["fsync"] if policy != "never" else 0)
                              + (c["commit"] if policy == "always" else 0)  # "always" commits every checkpoint alone
                              for c in (floor, floor_after))
        print(f"fsync={policy!r:11s} recording every step: {r * 1e3:.2f} ms, adds {100 * (r / b - 1):+.1f}% "
              f"(best of {args.repeat}); median of paired runs {100 * med:+.1f}%, {100 * with_close:+.1f}% with close "
              f"({1e3 * min(close[policy]):.0f} ms); writer thread {w_us:.0f} µs CPU per checkpoint "
              f"(the file system alone: {fs_us:.0f} µs before the runs, {fs_after_us:.0f} µs after), {100 * share:.0f}% of all {cores} cores' time per step")
        rows.append({"input": args.input, "threads": torch.get_num_threads(), "params": params, "policy": policy,
                     "base_ms": 1e3 * b, "record_ms": 1e3 * r, "overhead_best": r / b - 1, "overhead_median": med,
                     "overhead_with_close": with_close, "close_ms": 1e3 * min(close[policy]),
                     "writer_us": w_us, "writer_share": share, "file_system": fs, "file_system_us": fs_us, "file_system_after_us": fs_after_us, "file_cost_us": floor, "file_cost_after_us": floor_after,
                     "steps": args.steps, "cores": cores, "date": time.strftime("%Y-%m-%d")})
    if args.save:
        path = Path(args.save)
        doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "record_bench", "rows": []}
        key = (args.input, torch.get_num_threads(), fs)
        doc["rows"] = [r for r in doc["rows"] if (r["input"], r["threads"], r.get("file_system")) != key] + rows
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
