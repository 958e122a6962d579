"""`bimguard scan`: read a source, analyze, print a report, exit with a meaningful code."""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Any, TextIO

import msgspec

from bimguard.decode import InputError
from bimguard.findings import analyze
from bimguard.inventory import Inventory
from bimguard.objects import LONGHORN_GROUP, PLURALS
from bimguard.sources.bundle import read_bundle
from bimguard.sources.dump import MAX_DUMP_BYTES, STDIN, read_dump
from jobs import report, signals
from jobs.args import positive_int, seconds

# 0 and 1 are verdicts of a scan that ran; everything else (also a crash: jobs.cli) is 2.
EXIT_OK, EXIT_COLLISIONS, EXIT_INPUT = 0, 1, 2
DEFAULT_REQUEST_TIMEOUT = 30.0  # bimguard.sources.live.DEFAULT_REQUEST_TIMEOUT, without importing it
DUMP_COMMAND = ("kubectl get " + ",".join(f"{p}.{LONGHORN_GROUP}" for p in PLURALS.values())
                + " -n longhorn-system -o json > dump.json")

EPILOG = f"""\
sources (pick one; default: the live cluster):
  --from-dump PATH       output of
                           kubectl get nodes.longhorn.io,replicas.longhorn.io,backingimages.longhorn.io,\\
                             backingimagemanagers.longhorn.io,settings.longhorn.io -n longhorn-system -o json
                         (or -o yaml): a List, multi-document YAML, single objects, or a directory of such
                         files; "-" reads standard input; at most {MAX_DUMP_BYTES >> 30} GiB
  --support-bundle PATH  a Longhorn support bundle (.zip, or the extracted directory)
  live                   in a pod its service account, else --kubeconfig/--context (or $KUBECONFIG,
                         ~/.kube/config); needs get/list on nodes, replicas, backingimages,
                         backingimagemanagers and settings (longhorn.io) in Longhorn's namespace

exit codes:
  0  the scan read everything and found no collision to repair (none, or only informational
     ones: this Longhorn names BIMs by the whole UUID)
  1  at least one collision group to repair, or the scan is incomplete: some objects were
     skipped (listed in the report), and a skipped disk could collide
  2  no verdict: unreadable or too large input, bad usage, unreachable cluster, no usable
     nodes.longhorn.io at all, the report could not be written, or an internal error
  A closed standard output (scan | head) does not change the code.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-dump", metavar="PATH",
                     help="scan a kubectl dump: a file, a directory of them, or - for standard input "
                          "(default: the live cluster)")
    src.add_argument("--support-bundle", metavar="PATH",
                     help="scan a Longhorn support bundle: the .zip or its extracted directory")
    p.add_argument("--kubeconfig", metavar="PATH",
                   help="kubeconfig for a live scan (default: in a pod its service account, else $KUBECONFIG "
                        "or ~/.kube/config)")
    p.add_argument("--context", metavar="NAME",
                   help="kubeconfig context for a live scan (default: the kubeconfig's current-context)")
    p.add_argument("-n", "--namespace", default="longhorn-system", metavar="NAMESPACE",
                   help="Longhorn's namespace, for a live scan")
    p.add_argument("--page-size", type=positive_int, default=500, metavar="N",
                   help="objects per list request in a live scan")
    p.add_argument("--request-timeout", type=seconds, default=DEFAULT_REQUEST_TIMEOUT, metavar="DURATION",
                   help="how long one API request of a live scan may take: seconds, or 30s, 1m "
                        "(default %(default)g s)")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                   help="report format: a table, or the report document as JSON or YAML "
                        "(docs/scan-report.schema.json)")


def _load(args: argparse.Namespace) -> tuple[Inventory, dict[str, Any]]:
    if args.from_dump:
        where = STDIN if args.from_dump == "-" else f"dump {args.from_dump}"
        return read_dump(args.from_dump), {"type": "dump", "path": args.from_dump, "description": where}
    if args.support_bundle:
        return read_bundle(args.support_bundle), {"type": "support-bundle", "path": args.support_bundle,
                                                  "description": f"support bundle {args.support_bundle}"}
    from bimguard.sources.live import (
        scan_live,  # kubernetes_asyncio costs ~0.3 s to import; offline scans skip it
    )
    live = signals.run(scan_live(kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace,
                                 page_size=args.page_size, request_timeout=args.request_timeout))
    how = f"context {live.context}" if live.context else "in-cluster service account"
    return live.inventory, {"type": "live", "namespace": args.namespace, "context": live.context,
                            "server": live.server,
                            "description": f"the live cluster {live.server} ({how}, namespace {args.namespace})"}


def _kinds(counts: dict[tuple[str, str], int]) -> str:
    shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{n} {kind or 'object(s) without kind'}{f' ({api})' if api else ''}"
                     for (api, kind), n in shown[:4])
    return text + (f" and {len(shown) - 4} more kinds" if len(shown) > 4 else "")


def nothing_usable(inv: Inventory, source: dict[str, Any]) -> str:
    """Why a source gave no usable Longhorn Node, and what to do about it (one line)."""
    if source["type"] == "live":
        return (f"namespace {source['namespace']} of {source['server']}: no nodes.{LONGHORN_GROUP} objects: "
                f"is Longhorn installed in another namespace? (-n NAMESPACE)")
    where = STDIN if source.get("path") == "-" else source["path"]
    fix = (f"dump Longhorn's resources: {DUMP_COMMAND}" if source["type"] == "dump"
           else "is this the bundle of a cluster running Longhorn?")
    if inv.objects == 0:
        return f"{where}: empty: no Kubernetes objects in it; {fix}"
    core_nodes = inv.ignored.get(("v1", "Node"), 0)
    if core_nodes:
        return (f"{where}: {core_nodes} Kubernetes Node(s) (kind Node, apiVersion v1), not Longhorn's "
                f"nodes.{LONGHORN_GROUP}; {fix}")
    malformed = [s for s in inv.skipped if s.kind == "Node"]
    if malformed:
        first = malformed[0]
        more = f" (and {len(malformed) - 1} more)" if len(malformed) > 1 else ""
        return (f"{where}: no usable nodes.{LONGHORN_GROUP}: every Longhorn Node or disk was skipped, "
                f"first Node {first.name} in {first.source}: {first.error}{more}; nothing can be concluded")
    not_objects = [s for s in inv.skipped if s.kind in ("document", "item", "object")]
    if not_objects and len(not_objects) == inv.objects:
        first = not_objects[0]
        return f"{where}: {first.kind} {first.name} is {first.error}; {fix}"
    found = _kinds(inv.ignored)
    longhorn = len(inv.replicas) + len(inv.backing_images) + len(inv.bims) + len(inv.settings)
    held = ", ".join(x for x in (f"{longhorn} other Longhorn object(s)" if longhorn else "", found) if x)
    return f"{where}: no nodes.{LONGHORN_GROUP} objects{f' (it holds {held})' if held else ''}; {fix}"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    # A scan is one pass over millions of small acyclic objects; the cyclic garbage collector
    # would re-traverse them on every few thousand allocations and costs ~30 % of a large scan.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args, out, err)
    finally:
        if gc_was_enabled:
            gc.enable()


def _write(doc: dict[str, Any], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        # msgspec encodes a 30,000-group report ~10x faster than json.dump(indent=...).
        encoded = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
        if hasattr(out, "buffer"):
            out.flush()
            out.buffer.write(encoded)
            out.buffer.flush()
        else:
            out.write(encoded.decode())
    elif fmt == "yaml":
        import yaml

        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        out.write(yaml.dump(doc, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True))
    else:
        out.write(report.to_table(doc))
    out.flush()


# Characters that end a line for str.splitlines() or a terminal, and other control characters:
# an error message quotes names, kinds and apiVersions from the input, which may hold any of them.
_LINE_BREAKING = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_LINE_BREAKING.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """`text` with every line-breaking or control character escaped, so an error stays one line."""
    return text.translate(_LINE_BREAKING)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        inv, source = _load(args)
    except InputError as e:
        print(f"bimguard scan: {one_line(str(e))}", file=err)
        return EXIT_INPUT
    if inv.nodes == 0:
        # One line, like every other error (README "Exit codes"): it names the first skipped object.
        print(f"bimguard scan: {one_line(nothing_usable(inv, source))}", file=err)
        return EXIT_INPUT
    doc = report.to_json(analyze(inv), source)
    code = report.exit_code(doc)
    try:
        _write(doc, args.output, out)
    except BrokenPipeError:  # `bimguard scan | head`: the verdict stands
        _discard(out)
        return code
    except OSError as e:  # a full disk: the report is lost, so there is no verdict to give
        _discard(out)
        print(f"bimguard scan: cannot write the report: {e.strerror or e}", file=err)
        return EXIT_INPUT
    return code


def _discard(out: TextIO) -> None:
    if out is sys.stdout:
        from jobs.cli import discard_stdout

        discard_stdout()
