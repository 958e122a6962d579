"""The `bimguard` command (also `kubectl bimguard` and `python -m jobs`)."""

from __future__ import annotations

import argparse
import sys


DESCRIPTION = """\
bimguard keeps Longhorn v1 disk UUID prefixes unique, so no two disks want the same
Backing Image Manager name (Longhorn v1.9.1 and earlier name BIMs after the first
4 hex characters of the disk UUID)."""


class _Lazy:
    """A subcommand module imported only when used: the emulator pulls in the API server and
    kubernetes_asyncio, which a scan of a dump does not need."""

    def __init__(self, module: str) -> None:
        self._module = module

    def __getattr__(self, name: str):
        import importlib

        return getattr(importlib.import_module(self._module), name)


scan = _Lazy("jobs.scan")
demo = _Lazy("jobs.demo")
serve = _Lazy("bimguard.sim.serve")
webhook = _Lazy("webhook.main")
rewrite_cfg = _Lazy("bimguard.rewrite_cfg")


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

    p = sub.add_parser("demo", help="show the collision and the scan in the built-in cluster emulator",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)

    sim = sub.add_parser("sim", help="the cluster emulator (an API server with a simulated Longhorn v1.7.2)")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    p = sim_sub.add_parser("serve", help="serve a simulated Longhorn cluster until interrupted",
                           description="Run the emulated Kubernetes API server with a simulated Longhorn v1.7.2 "
                                       "cluster; write a kubeconfig once every initial disk is Ready.")
    serve.add_arguments(p)
    p.set_defaults(func=serve.run)

    p = sub.add_parser("webhook", help="run the mutating admission webhook that keeps new disks' prefixes unique",
                       description="Serve AdmissionReviews for Longhorn Node status writes over HTTPS; give a new "
                                   "v1 disk whose UUID prefix is taken a unique one, and make its cfg agree.")
    webhook.add_arguments(p)
    p.set_defaults(func=webhook.run)

    p = sub.add_parser("rewrite-cfg", help="compare-and-swap a disk's longhorn-disk.cfg (runs on the node)",
                       description="Atomically replace the diskUUID in <path>/longhorn-disk.cfg, only if the file "
                                   "names the expected disk and holds the old UUID (or already the new one).")
    rewrite_cfg.add_arguments(p)
    p.set_defaults(func=rewrite_cfg.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rewrite-cfg"]:
        # The privileged on-node pod runs this: keep it to the standard library by not building
        # the other subcommands' parsers (their modules import aiohttp, kubernetes_asyncio, ...).
        from bimguard import rewrite_cfg as rewrite

        return rewrite.main(argv[1:])
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
