"""`bimguard_rewrites_unfinished{phase}`: which DiskRewrite records still wait for something.

Every record in a phase that is not final counts; a Blocked one counts while its disk still
records the UUID it was blocked with and no repair record has taken it over. The rest is the audit
trail, kept forever, which must not keep an alert firing (charts/bimguard PrometheusRule,
BimguardRewritesUnfinished). Then the controller against the emulator: the gauge the leader
exports after a pass, and its clearing when leadership ends."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from bimguard import records
from bimguard.repair.steps import job_record_name
from bimguard.sim.apiserver import ApiServer
from bimguard.sim.longhorn.kube import api_client
from tests.webhook.harness import install_crds
from webhook.controller import RewriteController, unfinished
from webhook.metrics import Metrics

NS = "bimguard"
U1 = "0a1b2c3d-1111-4111-8111-111111111111"
U2 = "4e5f6a7b-2222-4222-8222-222222222222"
U3 = "8c9d0e1f-3333-4333-8333-333333333333"
RW = "bimguard.io/v1alpha1/diskrewrites"


def record(node: str, disk: str, old: str, *, origin: str, phase: str | None, new: str = "") -> dict[str, Any]:
    name = (records.record_name if origin == "webhook" else job_record_name)(node, disk, old)
    rec = records.rewrite_manifest(name=name, namespace=NS, node=node, disk=disk, disk_name=disk,
                                   disk_path=f"/mnt/{disk}", old_uuid=old, new_uuid=new, reason="test",
                                   origin=origin)  # type: ignore[arg-type]
    if phase is not None:
        rec["status"] = {"phase": phase}
    return rec


def recorded(*disks: tuple[str, str, str]) -> Any:
    """`still_recorded` for a cluster whose disks record exactly these (node, disk, uuid)."""
    return lambda node, disk, uuid: (node, disk, uuid) in disks


def test_non_final_records_count_whatever_their_disk_records() -> None:
    recs = [record("n1", "d1", U1, origin="webhook", phase=None, new="5eed" + U1[4:]),  # Pending
            record("n1", "d2", U2, origin="webhook", phase="Rewriting", new="5eed" + U2[4:]),
            record("n2", "d1", U1, origin="job", phase="Draining", new="abcd" + U1[4:]),
            record("n2", "d2", U2, origin="job", phase="Restoring", new="abcd" + U2[4:]),
            record("n3", "d1", U3, origin="job", phase="Preparing", new="abcd" + U3[4:])]
    assert unfinished(recs, recorded()) == {"Pending": 1, "Rewriting": 1, "Draining": 1, "Restoring": 1, "Preparing": 1}


def test_outcomes_are_history() -> None:
    recs = [record("n1", "d1", U1, origin="webhook", phase=p, new="5eed" + U1[4:]) for p in ("Done", "Abandoned")]
    recs.append(record("n2", "d1", U2, origin="job", phase="RolledBack", new="abcd" + U2[4:]))
    assert unfinished(recs, recorded(("n1", "d1", U1), ("n2", "d1", U2))) == {}


def test_a_blocked_record_counts_while_its_disk_still_records_the_uuid() -> None:
    blocked = record("n1", "d1", U1, origin="webhook", phase="Blocked")
    assert unfinished([blocked], recorded(("n1", "d1", U1))) == {"Blocked": 1}
    # Repaired by hand, removed, or re-recorded under another UUID: history.
    assert unfinished([blocked], recorded(("n1", "d1", U2))) == {}
    assert unfinished([blocked], recorded()) == {}
    # The same UUID on another disk is not this disk.
    assert unfinished([blocked], recorded(("n1", "d2", U1))) == {}


def test_the_repairs_record_takes_a_webhooks_blocked_record_over() -> None:
    blocked = record("n1", "d1", U1, origin="webhook", phase="Blocked")
    disk = recorded(("n1", "d1", U1))
    for phase, expected in (("Draining", {"Draining": 1}), ("Blocked", {"Blocked": 1}), ("Done", {})):
        job = record("n1", "d1", U1, origin="job", phase=phase, new="abcd" + U1[4:])
        # Counted once, as the repair's record (its disk still records U1 until the identity change).
        assert unfinished([blocked, job], disk) == expected, phase
    # A repair record of another disk or UUID does not.
    other = record("n1", "d1", U2, origin="job", phase="Done", new="abcd" + U2[4:])
    assert unfinished([blocked, other], disk) == {"Blocked": 1}


def test_the_gauge_exports_every_waiting_phase_and_is_cleared() -> None:
    metrics = Metrics()
    metrics.set_rewrites({"Done": 4, "Blocked": 2, "Draining": 1}, {"Blocked": 1, "Draining": 1})
    text = generate_latest(metrics.registry).decode()
    assert 'bimguard_rewrites_unfinished{phase="Blocked"} 1.0' in text
    assert 'bimguard_rewrites_unfinished{phase="Draining"} 1.0' in text
    assert 'bimguard_rewrites_unfinished{phase="Pending"} 0.0' in text
    assert 'bimguard_rewrites_unfinished{phase="Done"}' not in text
    # bimguard_rewrites counts every record, the repair's phases too.
    assert 'bimguard_rewrites{phase="Draining"} 1.0' in text and 'bimguard_rewrites{phase="Done"} 4.0' in text
    metrics.clear_rewrites()
    assert "bimguard_rewrites_unfinished{" not in generate_latest(metrics.registry).decode()


async def test_the_controller_computes_it_from_the_records_of_its_pass() -> None:
    api = ApiServer(namespace_seed=("default", "longhorn-system", NS))
    await api.start()
    client = api_client(api.url)
    try:
        await install_crds(client)
        for rec in (record("n1", "d1", U1, origin="webhook", phase="Blocked"),  # still colliding
                    record("n1", "d2", U2, origin="webhook", phase="Blocked"),  # re-recorded since
                    record("n2", "d1", U3, origin="webhook", phase="Blocked"),  # taken over by the repair
                    record("n2", "d1", U3, origin="job", phase="Draining", new="abcd" + U3[4:])):
            status = rec.pop("status")
            created = api.store.create(RW, rec)
            api.store.update(RW, {**created, "status": status}, subresource="status")
        passes: list[dict[str, int]] = []
        ctl = RewriteController(client, NS, "longhorn-system", "bimguard:test", on_pass=passes.append)
        await ctl.reconcile_once()
        assert passes == [{"Blocked": 3, "Draining": 1}]
        assert ctl.unfinished(recorded(("n1", "d1", U1), ("n1", "d2", U3), ("n2", "d1", U3))) == {
            "Blocked": 1, "Draining": 1}
    finally:
        await client.close()
        await api.stop()
