"""How one group commit's cost grows with the length of the run: appending vs rewriting whole.

    python benchmarks/manifest_bench.py [--sizes 1000 10000 100000] [--group 130] [--dir DIR] [--save F]

A Recorder lists the checkpoints written in the last ``flush_interval`` (0.2 s: 130
checkpoints of a 1.5 ms step) in one group commit. For a run whose manifest already lists N
checkpoints (entries shaped like a real Recorder's, ~210 bytes each), this times one commit of
``--group`` new checkpoints, best of ``--repeat``, three ways in one process:

* **rewrite**: the commit as trajlib made it before appending (the previous ``Recorder._commit``,
  kept here verbatim: its cache of serialised entries never worked, as ``setdefault`` built
  every entry's text again on every commit; the list sorted, the whole manifest written to a
  new file, fsynced and renamed);
* **rewrite, cache working**: the best a whole rewrite can do (each entry serialised once and
  kept, the texts joined and written; same fsync and rename): what appending gains over
  rewriting as such, the cache bug aside;
* **append**: ``Recorder._commit`` today (:func:`trajlib.manifest.append_checkpoints`: the
  kernel copies the history, Python serialises the new group only; same fsync and rename).

It prints each in ms, the ratio of the working rewrite to the append, and each commit's share of
the writer's time at one commit every 0.2 s. The folder (``--dir``, default the system's temporary folder) decides what the
fsync of a 24 MB file costs; no wall-clock bound is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import trajlib
from trajlib.manifest import ManifestStamp, dumps, fsync_dir, write_manifest

sys.path.insert(0, str(Path(__file__).parent))
from record_bench import file_system  # noqa: E402


def fake_entry(step: int) -> dict:
    """A checkpoint entry of the size a Recorder writes (step, epoch, time, one metric, file, sha256)."""
    return {"step": step, "epoch": step / 390, "wall_time": 1795960657.3358405 + step * 0.0015,
            "metrics": {"loss": 0.5 + 1e-6 * step}, "file": f"ckpt-{step:09d}.safetensors", "bytes": 97088,
            "content_sha256": f"{step * 2654435761:064x}"}


def rewrite_commit(run_dir: Path, manifest: dict, entry_json: dict, done: list[dict]) -> None:
    """The previous ``Recorder._commit`` (rewrite whole), verbatim but for the lock."""
    fsync_dir(run_dir)
    for c in manifest["checkpoints"]:
        entry_json.setdefault(c["step"], dumps(c))
    for entry in done:
        entry_json[entry["step"]] = dumps(entry)
    checkpoints = sorted(manifest["checkpoints"] + done, key=lambda c: c["step"])
    write_manifest(run_dir, {**manifest, "checkpoints": checkpoints}, [entry_json[c["step"]] for c in checkpoints])
    manifest["checkpoints"] = checkpoints


def rewrite_cached(run_dir: Path, manifest: dict, texts: list[str], done: list[dict]) -> ManifestStamp:
    """A whole rewrite with a working cache: ``texts`` holds every listed entry serialised once."""
    fsync_dir(run_dir)
    texts += [dumps(e) for e in done]
    manifest["checkpoints"] += done
    return write_manifest(run_dir, manifest, texts)


def measure(folder: Path, n: int, group: int, repeat: int) -> dict:
    """Best-of-``repeat`` ms of one commit of ``group`` checkpoints after ``n``, both ways."""
    run = folder / f"run-{n}"
    rec = trajlib.Recorder(torch.nn.Linear(2, 2), run, every=1, fresh=True)
    rec.flush()
    with rec._lock:
        rec.manifest["checkpoints"] += [fake_entry(s) for s in range(1, n)]
    rec._manifest_stamp = None
    next_step = n
    times = {"rewrite": [], "append": [], "rewrite_cached": []}
    entry_json: dict = {}

    def group_of_steps() -> list[dict]:
        nonlocal next_step
        next_step += group
        return [fake_entry(s) for s in range(next_step - group, next_step)]

    rec._commit(group_of_steps())  # the first commit rewrites whole, as a Recorder's first does
    for _ in range(repeat):
        t0 = time.perf_counter()
        rewrite_commit(run, rec.manifest, entry_json, group_of_steps())
        times["rewrite"].append(time.perf_counter() - t0)
        rec._manifest_stamp = ManifestStamp.of((run / "manifest.json").stat())  # what the rewrite left: append to it
        t0 = time.perf_counter()
        rec._commit(group_of_steps())
        times["append"].append(time.perf_counter() - t0)
        texts = [dumps(c) for c in rec.manifest["checkpoints"]]  # the cache a working rewrite keeps
        t0 = time.perf_counter()
        rec._manifest_stamp = rewrite_cached(run, rec.manifest, texts, group_of_steps())
        times["rewrite_cached"].append(time.perf_counter() - t0)
    size = (run / "manifest.json").stat().st_size
    listed = json.loads((run / "manifest.json").read_text())["checkpoints"]
    if [c["step"] for c in listed] != list(range(next_step)):
        raise AssertionError(f"{run}: the manifest does not list steps 0..{next_step - 1}")
    rec.close()
    shutil.rmtree(run)
    return {"checkpoints": n, "manifest_bytes": size, "group": group,
            "rewrite_ms": 1e3 * min(times["rewrite"]), "append_ms": 1e3 * min(times["append"]),
            "rewrite_cached_ms": 1e3 * min(times["rewrite_cached"])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--group", type=int, default=130, help="checkpoints per commit (0.2 s of 1.5 ms steps)")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--dir", help="folder the runs are written in (default: the system's temporary folder)")
    p.add_argument("--save", help="write the results as JSON (rendered on the book's methods page)")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="trajlib-manifest-bench-", dir=args.dir))
    fs = file_system(str(folder))
    print(f"one group commit of {args.group} checkpoints, {fs} ({folder}), best of {args.repeat}")
    print(f"{'listed':>9} {'manifest MB':>11} {'rewrite ms':>10} {'cached ms':>9} {'append ms':>9} "
          f"{'cached/append':>13} {'rewrite / 0.2 s':>15} {'append / 0.2 s':>14}")
    rows = []
    try:
        for n in args.sizes:
            r = measure(folder, n, args.group, args.repeat)
            rows.append(r)
            print(f"{n:>9,} {r['manifest_bytes'] / 1e6:>11.1f} {r['rewrite_ms']:>10.1f} {r['rewrite_cached_ms']:>9.1f} "
                  f"{r['append_ms']:>9.1f} {r['rewrite_cached_ms'] / r['append_ms']:>12.1f}x "
                  f"{r['rewrite_ms'] / 2:>14.0f}% {r['append_ms'] / 2:>13.1f}%", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {"benchmark": "manifest_bench", "file_system": fs, "group": args.group, "repeat": args.repeat,
           "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.save:
        path = Path(args.save)
        saved = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        saved["runs"] = [r for r in saved["runs"] if r["file_system"] != fs] + [out]
        path.write_text(json.dumps(saved, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
