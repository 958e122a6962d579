"""The controller's pure helpers: JSON Pointer escaping, the rollback patch, pod outcomes, times."""

from __future__ import annotations

import time

import pytest

from bimguard.decision import REASON, cfg_differs
from bimguard.sim.patch import PatchError, apply_json_patch
from bimguard.rewrite.engine import parse_time, pointer_token, rollback_patch, termination, written_no_earlier_than

OLD = "c0120d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"
NEW = "5eed0d6e-3b1a-4f7e-9a55-1a2b3c4d5e6f"


def test_pointer_token_escapes_tilde_before_slash() -> None:
    assert pointer_token("disk-1") == "disk-1"
    assert pointer_token("a/b") == "a~1b"
    assert pointer_token("a~b") == "a~0b"
    assert pointer_token("~/") == "~0~1"  # not "~01": `~` first


def test_rollback_patch_only_replaces_our_uuid_and_leaves_no_longhorn_verdict_about_it() -> None:
    mismatch = {"type": "Ready", "status": "False", "reason": "DiskFilesystemChanged",
                "message": "Disk x(/x) on node n is not ready: record diskUUID doesn't match the one on the disk "}
    node = {"status": {"diskStatus": {"odd/name~x": {"diskUUID": NEW, "diskName": "odd/name~x", "conditions": [mismatch]}}}}
    assert cfg_differs(node["status"]["diskStatus"]["odd/name~x"])
    patched = apply_json_patch(node, rollback_patch("odd/name~x", OLD, NEW, "put back", "2026-01-01T00:00:00Z"))
    entry = patched["status"]["diskStatus"]["odd/name~x"]
    assert entry["diskUUID"] == OLD
    # Longhorn's verdict was about NEW: it must not stay beside OLD (a Done record would read it as
    # "the cfg holds our new UUID" and record that again over a cfg holding OLD).
    assert not cfg_differs(entry)
    assert {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]} == \
        {"Ready": ("False", REASON), "Schedulable": ("False", REASON)}
    other = {"status": {"diskStatus": {"odd/name~x": {"diskUUID": OLD}}}}
    with pytest.raises(PatchError):  # the `test` op fails: nothing is overwritten
        apply_json_patch(other, rollback_patch("odd/name~x", OLD, NEW, "put back", "2026-01-01T00:00:00Z"))


def test_termination_reads_exit_code_and_message() -> None:
    pod = {"status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 3, "reason": "Error", "message": "refused: names disk 'x'\n"}}}]}}
    assert termination(pod) == (3, "refused: names disk 'x'")
    never = {"status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"}}
    assert termination(never) == (None, "Pod was active too long")


def test_times() -> None:
    assert parse_time("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_time("2026-01-01T00:00:00.250000Z") == 1767225600.25
    assert parse_time("") is None and parse_time("garbage") is None
    # Whole-second stamps may stand for any moment in that second: take the latest.
    assert written_no_earlier_than("2026-01-01T00:00:00Z") == 1767225601.0
    assert written_no_earlier_than("2026-01-01T00:00:00.250000Z") == 1767225600.25


def test_server_clock_reads_the_date_header_and_errs_young() -> None:
    from bimguard.kube import ServerClock

    clock = ServerClock()
    assert not clock.synced and abs(clock.now() - time.time()) < 1  # no response yet: the local clock
    clock.observe("Fri, 04 Dec 2026 20:00:00 GMT")
    assert clock.synced and 1796414400.0 <= clock.now() < 1796414401.0
    # A whole-second stamp may stand for any moment of its second: its end is taken.
    assert 58.9 < clock.age("2026-12-04T19:59:00Z") < 59.5
    assert 59.4 < clock.age("2026-12-04T19:59:00.5Z") < 60.0
    assert clock.age("") is None and clock.age("yesterday") is None
    clock.observe("not a date")  # ignored
    assert 1796414400.0 <= clock.now() < 1796414401.0
    assert clock.rfc3339().startswith("2026-12-04T20:00:00.")
