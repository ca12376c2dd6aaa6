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
    sub.add_parser("build", help="render the ledger and build the book from executed notebooks")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from .book import Layout, build_book, reproduce, write_ledger

    try:
        if args.command == "reproduce":
            return reproduce(preset=args.preset, only=args.only, keep_going=args.keep_going, build=not args.no_build)
        layout = Layout()
        write_ledger(layout)
        return build_book(layout)
    except (ValueError, FileNotFoundError) as exc:
        print(f"trajlib.paper {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
