"""The ``trajlib`` command line: reproduce, build, gram, inspect."""

from __future__ import annotations

import argparse
import logging
import sys

from .presets import PRESETS


def _reproduce(args) -> int:
    from .reproduce import reproduce

    return reproduce(preset=args.preset, only=args.only, keep_going=args.keep_going, build=not args.no_build)


def _build(args) -> int:
    from .reproduce import Layout, build_book, write_ledger

    layout = Layout()
    write_ledger(layout)
    return build_book(layout)


def _gram(args) -> int:
    import pandas as pd

    from .gram import gram
    from .hallmarks import hallmarks
    from .store import open_trajectory

    traj = open_trajectory(args.run, drop_duplicates=args.drop_duplicates)
    stats = gram(traj, groups=args.group or None, device=args.device, updates=args.updates,
                 cache=not args.no_cache, heads=args.heads)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 4):
        print(hallmarks(stats, updates=args.updates))
    return 0


def _inspect(args) -> int:
    from .store import open_trajectory

    traj = open_trajectory(args.run)
    print(traj)
    meta = traj.meta
    for key in ("model", "optimizer", "seed"):
        if key in meta:
            print(f"  {key}: {meta[key]}")
    print(f"  tensors: {len(traj.names)} ({traj.P:,} parameters, {traj.nbytes / 1e6:.1f} MB over {traj.T} checkpoints)")
    print(f"  steps: {', '.join(str(s) for s in traj.steps[:8])}{' ...' if traj.T > 8 else ''}")
    for name, members in traj.groups.items():
        if members:
            print(f"  group {name}: {len(members)} tensors")
    findings = traj.validate(hashes=not args.no_hash, finite=not args.no_finite)
    for f in findings:
        print(f"  ! {f}")
    print("  valid" if not findings else f"  {len(findings)} finding(s)")
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="trajlib", description="Optimisation trajectories: record, stream, hallmark.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reproduce", help="execute the notebooks at a preset, then build the book")
    r.add_argument("--preset", default="laptop", choices=PRESETS)
    r.add_argument("--only", nargs="+", metavar="NAME", help="notebook names or numbers (e.g. 01 03-batch-size)")
    r.add_argument("--keep-going", action="store_true", help="run the other notebooks after a failure")
    r.add_argument("--no-build", action="store_true", help="execute the notebooks only")
    r.set_defaults(fn=_reproduce)

    b = sub.add_parser("build", help="render the ledger and build the book from executed notebooks")
    b.set_defaults(fn=_build)

    g = sub.add_parser("gram", help="compute (or reuse) a run's Gram and print its hallmarks")
    g.add_argument("run", help="run directory, Hugging Face checkpoint folder")
    g.add_argument("--group", action="append", help="all, bn, layers, modules, qkv, qkv_heads or name=regex (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--updates", default="full", choices=("band", "full"))
    g.add_argument("--heads", type=int, help="attention heads (qkv groups) if the run has no config")
    g.add_argument("--no-cache", action="store_true")
    g.add_argument("--drop-duplicates", action="store_true")
    g.set_defaults(fn=_gram)

    i = sub.add_parser("inspect", help="summarise a run and validate it")
    i.add_argument("run")
    i.add_argument("--no-hash", action="store_true", help="skip sha256 and duplicate checks")
    i.add_argument("--no-finite", action="store_true", help="skip the NaN/Inf scan")
    i.set_defaults(fn=_inspect)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"trajlib {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
