"""The ``trajlib`` command line: ``inspect`` a run and print its hallmarks with ``gram``; list the
public checkpoint ``suites`` and ``audit`` one from the hub's metadata.

Exit codes: 0 done (or a clean run); 1 ``inspect`` or ``audit`` found problems; 2 bad arguments; 3 the data
is invalid (a :class:`~trajlib.manifest.TrajectoryError`, one line naming the file); 4 a file or
folder is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .audit import MissingExtra
from .manifest import TrajectoryError

EXIT_FINDINGS, EXIT_USAGE, EXIT_INVALID, EXIT_MISSING = 1, 2, 3, 4


def _gram(args) -> int:
    import pandas as pd

    from .gram import gram
    from .hallmarks import hallmark_table
    from .sources import open_trajectory

    traj = open_trajectory(args.run, drop_duplicates=args.drop_duplicates)
    stats = gram(traj, groups=args.group or None, device=args.device, cache=not args.no_cache)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 4):
        print(hallmark_table(stats))
    return 0


def _inspect(args) -> int:
    from .sources import open_trajectory

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
    return EXIT_FINDINGS if findings else 0


def _suites(args) -> int:
    from .suites import SUITES

    for s in SUITES.values():
        steps = s.expected_steps()
        print(f"{s.name:15s} {len(s.repos):2d} repos  {f'{len(steps)} steps' if steps else 'no schedule':12s}  "
              f"{', '.join(s.formats)}{'  (' + s.notes + ')' if s.notes else ''}")
    return 0


def _audit(args) -> int:
    import pandas as pd

    from .audit import audit

    result = audit(args.name, api=_api(args.endpoint))
    table = result.table if args.all else result.flagged()
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 80):
        print(table.to_string(index=False) if len(table) else "no branch flagged")
    for repo in result.table.repo.unique():
        cov = result.coverage(repo)
        counts = result.table[result.table.repo == repo].status.value_counts().to_dict()
        print(f"{repo}: {counts}" + (f", coverage {cov:.1%} of the schedule" if cov is not None else ""))
    return EXIT_FINDINGS if len(result.flagged()) else 0


def _api(endpoint):
    from .audit import hf_api

    return hf_api(endpoint)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajlib", description="Optimisation trajectories: inspect a run, "
                                "compute its hallmarks.", epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gram", help="compute (or reuse) a run's Gram and print its hallmark table")
    g.add_argument("run", help="run directory or Hugging Face checkpoint folder")
    g.add_argument("--group", action="append",
                   help="all, matrices, bn, layers, modules, qkv[:heads], qkv_heads[:heads] or name=regex (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-cache", action="store_true")
    g.add_argument("--drop-duplicates", action="store_true")
    g.set_defaults(fn=_gram)

    i = sub.add_parser("inspect", help="summarise a run and validate it")
    i.add_argument("run")
    i.add_argument("--no-hash", action="store_true", help="skip sha256 and duplicate checks")
    i.add_argument("--no-finite", action="store_true", help="skip the NaN/Inf scan")
    i.set_defaults(fn=_inspect)

    sub.add_parser("suites", help="list the registered public checkpoint suites").set_defaults(fn=_suites)
    a = sub.add_parser("audit", help="audit a suite or hub repository from its file metadata (no weights read)")
    a.add_argument("name", help="a suite (pythia, olmo2, ...) or a repository owner/name")
    a.add_argument("--endpoint", default=None, help="hub address (default HF_ENDPOINT or huggingface.co)")
    a.add_argument("--all", action="store_true", help="print every branch, not only the flagged ones")
    a.set_defaults(fn=_audit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except TrajectoryError as exc:
        print(f"trajlib {args.command}: invalid data: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except FileNotFoundError as exc:
        print(f"trajlib {args.command}: {exc}", file=sys.stderr)
        return EXIT_MISSING
    except MissingExtra as exc:  # an optional extra (the hub's client) is not installed
        print(f"trajlib {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if not type(exc).__module__.startswith(("huggingface_hub", "httpx", "requests")) or args.verbose:
            raise  # a local error (disk, permissions) keeps its traceback
        print(f"trajlib {args.command}: the hub refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_MISSING
    except ValueError as exc:
        print(f"trajlib {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
