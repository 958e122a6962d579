"""The `bimguard` command (also `kubectl bimguard` and `python -m jobs`).

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> int`.
Only the module of the command being run is imported: the emulator and the webhook pull in
aiohttp and kubernetes_asyncio (~0.4 s), which a scan of a dump does not need, and the on-node
`rewrite-cfg` must load nothing but the standard library.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

DESCRIPTION = """\
bimguard keeps Longhorn v1 disk UUID prefixes unique, so no two disks want the same
Backing Image Manager name (Longhorn v1.9.1 and earlier name BIMs after the first
4 hex characters of the disk UUID)."""


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("sim", "serve") for a nested command
    module: str
    help: str
    description: str = ""
    epilog_attr: str = ""  # a module attribute holding the --help epilog


COMMANDS = (
    Command(("scan",), "jobs.scan", "find disks whose UUID prefixes collide, and plan the repair",
            "Find v1 disks whose UUIDs share their first 4 characters (so their Backing Image Managers want the "
            "same name), show the stuck backing-image copies, and plan which disk keeps its UUID.", "EPILOG"),
    Command(("demo",), "jobs.demo", "show the collision, the scan and the webhook in the built-in cluster emulator"),
    Command(("sim", "serve"), "bimguard.sim.serve", "serve a simulated Longhorn cluster until interrupted",
            "Run the emulated Kubernetes API server with a simulated Longhorn v1.7.2 cluster; write a kubeconfig "
            "once every initial disk is Ready."),
    Command(("webhook",), "webhook.main", "run the mutating admission webhook that keeps new disks' prefixes unique",
            "Serve AdmissionReviews for Longhorn Node status writes over HTTPS; give a new v1 disk whose UUID prefix "
            "is taken a unique one, and make its cfg agree."),
    Command(("rewrite-cfg",), "bimguard.rewrite_cfg", "compare-and-swap a disk's longhorn-disk.cfg (runs on the node)",
            "Atomically replace the diskUUID in <path>/longhorn-disk.cfg, only if the file names the expected disk "
            "and holds the old UUID (or already the new one)."),
)
GROUP_HELP = {"sim": "the cluster emulator (an API server with a simulated Longhorn v1.7.2)"}


def build_parser(only: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The whole CLI; with `only`, just that command's options are built (and its module imported)."""
    parser = argparse.ArgumentParser(prog="bimguard", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        parent = sub
        if len(cmd.path) == 2:
            if cmd.path[0] not in groups:
                g = sub.add_parser(cmd.path[0], help=GROUP_HELP[cmd.path[0]])
                groups[cmd.path[0]] = g.add_subparsers(dest=f"{cmd.path[0]}_command", metavar="COMMAND",
                                                       required=True)
            parent = groups[cmd.path[0]]
        wanted = only is None or cmd.path == only[: len(cmd.path)]
        module = importlib.import_module(cmd.module) if wanted else None
        p = parent.add_parser(cmd.path[-1], help=cmd.help,
                              description=cmd.description or (module.__doc__ if module else None),
                              epilog=getattr(module, cmd.epilog_attr, None) if module and cmd.epilog_attr else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def _selected(argv: list[str]) -> tuple[str, ...]:
    words = [a for a in argv if not a.startswith("-")][:2]
    for cmd in COMMANDS:
        if tuple(words[: len(cmd.path)]) == cmd.path:
            return cmd.path
    return ()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_selected(argv)).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("bimguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bimguard scan | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
