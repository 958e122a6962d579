"""The `bimguard` command (also `kubectl bimguard` and `python -m jobs`).

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> int`.
Only the module of the command being run is imported: the emulator and the webhook pull in
aiohttp and kubernetes_asyncio (~0.4 s), which a scan of a dump does not need, and the on-node
`rewrite-cfg` must load nothing but the standard library.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from jobs.signals import Terminated

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
    Command(("repair",), "jobs.repair", "fix the collisions a cluster already has (plan; --apply to act)",
            "Regenerate the UUID of one disk of each colliding pair, safely: without --apply, print the plan; "
            "with --apply, carry it out on the live cluster, draining disks that hold data through Longhorn's "
            "eviction only with --evict.", "EPILOG"),
    Command(("demo",), "jobs.demo", "show the collision, the scan, the webhook and the repair in the built-in cluster emulator"),
    Command(("sim", "serve"), "bimguard.sim.serve", "serve a simulated Longhorn cluster until interrupted",
            "Run the emulated Kubernetes API server with a simulated Longhorn cluster (v1.7.2 unless "
            "--longhorn-version); write a kubeconfig once every initial disk is Ready."),
    Command(("webhook",), "webhook.main", "run the mutating admission webhook that keeps new disks' prefixes unique",
            "Serve AdmissionReviews for Longhorn Node status writes over HTTPS; give a new v1 disk whose UUID prefix "
            "is taken a unique one, and make its cfg agree."),
    Command(("rewrite-cfg",), "bimguard.rewrite_cfg", "compare-and-swap a disk's longhorn-disk.cfg (runs on the node)",
            "Atomically replace the diskUUID in <path>/longhorn-disk.cfg, only if the file names the expected disk "
            "and holds the old UUID (or already the new one)."),
    Command(("completion",), "jobs.completion", "print a shell completion script (bash; zsh via bashcompinit)"),
    Command(("check-webhook",), "jobs.check_webhook",
            "check that the webhook answers over TLS verified with its configuration's caBundle (helm test)",
            "POST a harmless AdmissionReview to the webhook as the API server would: at the address of its "
            "MutatingWebhookConfiguration, over TLS verified with that configuration's caBundle.", "EPILOG"),
    Command(("inspect-disk",), "bimguard.inspect_disk", "list a disk directory's replicas/ and backing-images/ (runs on the node)",
            "Print the subdirectories of <path>/replicas and <path>/backing-images as one line of JSON; change nothing."),
)
GROUP_HELP = {"sim": "the cluster emulator (an API server with a simulated Longhorn v1.7.2, v1.8.1 or v1.9.1)"}
# Exit code of a command whose standard output was closed early (`bimguard demo | head`): what a
# process killed by SIGPIPE reports in a shell. `bimguard scan` keeps its verdict instead.
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it
EXIT_ERROR = 2


class Parser(argparse.ArgumentParser):
    """Usage errors are one line (what is wrong, and where help is), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows every option's default that its help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return text
        return f"{text} (default %(default)s)"


class _Version(argparse.Action):
    """--version, from the installed package's metadata (looked up only when asked)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print bimguard's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("bimguard")
        except PackageNotFoundError:
            v = "(version unknown: not installed; pip install -e .)"
        parser._print_message(f"bimguard {v}\n", sys.stdout)
        parser.exit(0)


def prog_name(argv0: str | None = None) -> str:
    """`kubectl bimguard` when run as the kubectl plugin (kubectl execs kubectl-bimguard), else `bimguard`."""
    name = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    return "kubectl bimguard" if name.startswith("kubectl-bimguard") else "bimguard"


def discard_stdout() -> None:
    """Point standard output at /dev/null after it failed (closed pipe, full disk), so the
    interpreter's last flush of what is still buffered cannot fail again with a traceback."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests capture stdout)
        pass


def build_parser(only: tuple[str, ...] | None = None, prog: str = "bimguard") -> argparse.ArgumentParser:
    """The whole CLI; with `only`, just that command's options are built (and its module imported)."""
    parser = Parser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        parent = sub
        if len(cmd.path) == 2:
            if cmd.path[0] not in groups:
                g = sub.add_parser(cmd.path[0], help=GROUP_HELP[cmd.path[0]], formatter_class=HelpFormatter)
                groups[cmd.path[0]] = g.add_subparsers(dest=f"{cmd.path[0]}_command", metavar="COMMAND",
                                                       required=True)
            parent = groups[cmd.path[0]]
        wanted = only is None or cmd.path == only[: len(cmd.path)]
        module = importlib.import_module(cmd.module) if wanted else None
        p = parent.add_parser(cmd.path[-1], help=cmd.help,
                              description=cmd.description or (module.__doc__ if module else None),
                              epilog=getattr(module, cmd.epilog_attr, None) if module and cmd.epilog_attr else None,
                              formatter_class=HelpFormatter)
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
    """Run one command. Its own exit code is returned; whatever escapes it becomes one line on
    standard error and exit code 2 (never 0 or 1, which `scan` keeps for a verdict), never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    prog = prog_name()
    try:
        args = build_parser(_selected(argv), prog).parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # `bimguard demo | head`; `scan` handles this itself and keeps its verdict
        discard_stdout()
        return EXIT_BROKEN_PIPE
    except MemoryError:
        print(f"{prog}: out of memory", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, exit 2
        if isinstance(err, ModuleNotFoundError) and (err.name or "").startswith("bimguard.sim"):
            # The container image leaves the cluster emulator out (Dockerfile): demo and sim are
            # for a workstation.
            print(f"{prog}: the cluster emulator is not installed here (the container image leaves it out); "
                  f"`pip install bimguard` on a workstation runs `{prog} demo` and `{prog} sim serve`", file=sys.stderr)
            return EXIT_ERROR
        detail = str(err).splitlines()[0] if str(err) else ""
        print(f"{prog}: internal error: {type(err).__name__}{': ' + detail if detail else ''} "
              f"(a bug: please report it with the command line)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
