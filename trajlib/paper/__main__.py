"""``python -m trajlib.paper``: execute the notebooks at a preset and build the book."""

from __future__ import annotations

import argparse
import logging
import sys

from .presets import PRESETS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trajlib.paper", description="Reproduce the Hallmarks book.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reproduce", help="execute the notebooks at a preset, then build the book")
    r.add_argument("--preset", default="laptop", choices=PRESETS)
    r.add_argument("--only", nargs="+", metavar="NAME", help="notebook names or numbers (e.g. 01 03-batch-size)")
    r.add_argument("--keep-going", action="store_true", help="run the other notebooks after a failure")
    r.add_argument("--no-build", action="store_true", help="execute the notebooks only")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="after the language-model pages (alone, every core), run N pages at once on cores/N threads each")
    sub.add_parser("build", help="render the ledger and build the book from executed notebooks")
    v = sub.add_parser("verify", help="re-execute pages from scratch and compare their numbers with the published ones")
    v.add_argument("--only", nargs="+", metavar="NAME", help="notebook names or numbers (default: every published page)")
    v.add_argument("--published", help="folder of published results JSON (default: book/figures/results)")
    v.add_argument("--preset", choices=PRESETS, help="re-run at this preset (default: the one each page was published at)")
    v.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance (default 1e-9)")
    v.add_argument("--atol", type=float, default=1e-12, help="absolute tolerance (default 1e-12)")
    v.add_argument("--all", action="store_true", help="print every compared field, not only mismatches")
    v.add_argument("--work", help="keep the re-run here instead of a temporary folder")
    c = sub.add_parser("compare", help="compare two builds' results folders field by field (exact by default)")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("--rtol", type=float, default=0.0)
    c.add_argument("--atol", type=float, default=0.0)
    m = sub.add_parser("margins", help="measure the test suite's seed checks over many seeds (ci preset)")
    m.add_argument("--only", nargs="+", metavar="NAME", help="notebook names or numbers")
    m.add_argument("--seeds", type=int, default=20)
    m.add_argument("--work", required=True, help="folder for the runs and results (kept; reused by a rerun)")
    m.add_argument("--no-run", action="store_true", help="summarise what --work already holds")
    m.add_argument("--save", help="JSON file to merge the summaries into (e.g. book/benchmarks/seed_margins.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from .book import Layout, build_book, reproduce, write_ledger

    try:
        if args.command == "reproduce":
            return reproduce(preset=args.preset, only=args.only, keep_going=args.keep_going, build=not args.no_build,
                             jobs=args.jobs)
        if args.command == "verify":
            from .verify import verify

            return verify(args.only, published=args.published, preset=args.preset, rtol=args.rtol, atol=args.atol,
                          show_all=args.all, work=args.work)
        if args.command == "compare":
            from .verify import compare_builds

            return compare_builds(args.first, args.second, rtol=args.rtol, atol=args.atol)
        if args.command == "margins":
            return _margins(args)
        layout = Layout()
        write_ledger(layout)
        return build_book(layout)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"trajlib.paper {args.command}: {exc}", file=sys.stderr)
        return 2


def _margins(args) -> int:
    import json
    from pathlib import Path

    from ..manifest import atomic_write
    from .seed_checks import measure, summaries, trusted

    if not args.no_run:
        measure(args.only, seeds=args.seeds, work=args.work)
    found = summaries(args.work)
    for name, s in found.items():
        print(f"{name:22s} n={s['n']:3d} held={s['held']:3d} mean={s['mean']:+.4f} sd={s['sd']:.4f} "
              f"min={s['min']:+.4f} z={s['z']:.1f} {'trusted' if trusted(s) else 'NOT trusted'}")
    if args.save:
        path = Path(args.save)
        old = json.loads(path.read_text()) if path.is_file() else {}
        atomic_write(path, json.dumps({**old, **found}, indent=1, sort_keys=True).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
