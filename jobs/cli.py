"""The `bimguard` command (also `kubectl bimguard` and `python -m jobs`)."""

from __future__ import annotations

import argparse
import sys

from jobs import scan

DESCRIPTION = """\
bimguard keeps Longhorn v1 disk UUID prefixes unique, so no two disks want the same
Backing Image Manager name (Longhorn v1.9.1 and earlier name BIMs after the first
4 hex characters of the disk UUID)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bimguard", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("scan", help="find disks whose UUID prefixes collide, and plan the repair",
                       description="Find v1 disks whose UUIDs share their first 4 characters (so their "
                                   "Backing Image Managers want the same name), show the stuck backing-image "
                                   "copies, and plan which disk keeps its UUID.",
                       epilog=scan.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    scan.add_arguments(p)
    p.set_defaults(func=scan.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("bimguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bimguard scan | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
