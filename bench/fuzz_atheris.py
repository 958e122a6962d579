#!/usr/bin/env python3
"""Coverage-guided fuzzing with atheris (libFuzzer for CPython), run by bench/fuzz_bench.py --atheris.

    python bench/fuzz_atheris.py review CORPUS_DIR [libFuzzer flags]   # webhook.review + admission pre-checks
    python bench/fuzz_atheris.py dump CORPUS_DIR [libFuzzer flags]     # bimguard.decode.decode_document

Each entry point takes the raw bytes a server or a scan would be given. Documented outcomes are
swallowed (`BadReview`: the server's 400; `InputError`: the scan's exit 2); anything else raised is a
crash that libFuzzer reports with the input that caused it. The corpus is seeded with the
project's samples (the sample review, examples/collision-dump.json, the sample bundle's YAML).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

with atheris.instrument_imports():
    import webhook.review as wire
    from bimguard.decision import first_recorded
    from bimguard.decode import InputError, decode_document
    from bimguard.findings import analyze
    from bimguard.inventory import Inventory


def review_entry(data: bytes) -> None:
    try:
        brief = wire.decode_brief(data).request
    except wire.BadReview:
        return
    assert brief is not None and brief.uid
    wire.no_new_uuid(brief.object, brief.oldObject)
    try:
        req = wire.decode(data).request
    except wire.BadReview:
        return
    node = (req.object.metadata.name if req.object and req.object.metadata else "") or req.name or ""
    for disk in first_recorded(node, wire.disk_entries(req.object), wire.disk_entries(req.oldObject)):
        wire.disk_conditions(req.object, disk.disk)
    wire.allowed(req.uid, patch=[{"op": "replace", "path": "/x", "value": node}], warnings=[node])


def dump_entry(data: bytes) -> None:
    inv = Inventory()
    try:
        decode_document(data, "fuzz", inv)
    except InputError:
        return
    analyze(inv)


def seeds(entry: str, corpus: Path) -> None:
    if any(corpus.iterdir()):
        return
    if entry == "review":
        files = [REPO / "tests/fixtures/longhorn/samples/admission/nodes-status-first-record.request.json"]
    else:
        files = [REPO / "examples/collision-dump.json",
                 *sorted((REPO / "tests/fixtures/longhorn/samples/support-bundle").rglob("*.yaml"))]
    for i, f in enumerate(files):
        (corpus / f"seed-{i}").write_bytes(f.read_bytes())


def main() -> None:
    entry, corpus = sys.argv[1], Path(sys.argv[2])
    seeds(entry, corpus)
    target = {"review": review_entry, "dump": dump_entry}[entry]
    atheris.Setup([sys.argv[0], str(corpus), *sys.argv[3:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
