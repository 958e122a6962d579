"""Collision groups, dependents, keeper choice, symptoms: the pure analysis on built objects."""

import msgspec

from bimguard import objects as wire
from bimguard.findings import analyze
from bimguard.inventory import Inventory
from tests.builders import backing_image, bim, disk_entry, node, replica, setting

IMG = "longhornio/backing-image-manager:v1.7.2"
A = "c01200da-8a5c-4692-92e6-c4a983087951"
B = "c012eb76-f8eb-4ea1-b81d-472eac9d98bf"
C = "a9394d40-2811-4778-89bd-03edf86d0e75"


def inventory(*objs) -> Inventory:
    inv = Inventory()
    for o in objs:
        inv.add(msgspec.convert(o, wire.KINDS[o["kind"]]), "test")
    return inv


def test_groups_only_v1_disks_with_a_uuid_and_ignore_case():
    inv = inventory(
        node("n1", {"d1": disk_entry(A, "/d1"), "d2": disk_entry(C, "/d2")}),
        node("n2", {"d1": disk_entry(B.upper(), "/d1"), "blk": disk_entry("c0120000-0000-4000-8000-000000000000",
                                                                           "/dev/sdb", dtype="block"),
                    "new": disk_entry("", "/new")}),
        setting("default-backing-image-manager-image", IMG),
    )
    f = analyze(inv)
    assert (f.disks_total, f.disks_v1, f.disks_v2, f.disks_without_uuid) == (5, 4, 1, 1)
    assert [(p.group.prefix, p.group.kind, [d.key for d in p.group.disks]) for p in f.plans] == [
        ("c012", "prefix", [("n1", "d1"), ("n2", "d1")])
    ]
    assert f.actionable


def test_a_cloned_disk_is_a_duplicate_uuid_group_and_replicas_count_by_node():
    inv = inventory(
        node("n1", {"d": disk_entry(A, "/d")}),
        node("n2", {"d": disk_entry(A, "/d")}),
        replica("v-r-1", "n1", A), replica("v-r-2", "n1", A), replica("w-r-1", "n2", A),
    )
    f = analyze(inv)
    (plan,) = f.plans
    assert plan.group.kind == "duplicate-uuid"
    held = {d.key: h for d, h in zip(plan.group.disks, plan.dependents)}
    assert len(held[("n1", "d")].replicas) == 2 and len(held[("n2", "d")].replicas) == 1
    assert plan.keep.key == ("n1", "d") and "most data" in plan.keep_reason
    (regen,) = plan.regenerate
    assert regen.disk.key == ("n2", "d") and regen.needs_eviction and "cloned" in regen.reason


def test_keep_rule_order_bim_owner_then_data_then_name():
    disks = [node("n1", {"d": disk_entry(A, "/d")}), node("n2", {"d": disk_entry(B, "/d")})]
    # 1. The BIM owner wins even with less data.
    f = analyze(inventory(*disks, setting("default-backing-image-manager-image", IMG),
                          bim("backing-image-manager-5ae6-c012", "n2", B, IMG),
                          replica("v-r-1", "n1", A), replica("v-r-2", "n1", A)))
    assert f.plans[0].keep.key == ("n2", "d") and f.plans[0].keep_reason == "owns backing-image-manager-5ae6-c012"
    # A BIM of that name on another node with the same UUID is not ownership (clones).
    f = analyze(inventory(*disks, setting("default-backing-image-manager-image", IMG),
                          bim("backing-image-manager-5ae6-c012", "n9", B, IMG), replica("v-r-1", "n1", A)))
    assert f.plans[0].keep.key == ("n1", "d")
    # 2. Most data (replicas + backing-image copies).
    f = analyze(inventory(*disks, backing_image("bi", [B], {B: "ready"}), replica("v-r-1", "n1", A),
                          backing_image("bi2", [B], {B: "ready"})))
    assert f.plans[0].keep.key == ("n2", "d")
    # 3. Smallest (node, disk) on a tie; the other holds no data and needs no eviction.
    f = analyze(inventory(*disks))
    plan = f.plans[0]
    assert plan.keep.key == ("n1", "d") and not plan.regenerate[0].needs_eviction
    assert "no data" in plan.regenerate[0].reason


def test_scheduled_replicas_alone_count_as_data():
    f = analyze(inventory(node("n1", {"d": disk_entry(A, "/d")}),
                          node("n2", {"d": disk_entry(B, "/d", scheduled=["v-r-9"])})))
    plan = f.plans[0]
    assert plan.keep.key == ("n1", "d")  # equal data counts (scheduled entries are not weighed)
    assert plan.regenerate[0].needs_eviction


def test_symptom_needs_a_foreign_bim_holding_the_name():
    objs = [node("n1", {"d": disk_entry(A, "/d")}), node("n2", {"d": disk_entry(B, "/d")}),
            setting("default-backing-image-manager-image", IMG),
            backing_image("bi", [A, B], {A: "ready"}),
            replica("v-r-1", "n2", B, backing_image="bi", state="stopped"),
            replica("v-r-2", "n2", B, backing_image="bi", state="running")]
    f = analyze(inventory(*objs, bim("backing-image-manager-5ae6-c012", "n1", A, IMG, ["bi"])))
    (s,) = f.symptoms
    assert (s.backing_image, s.node, s.disk, s.disk_uuid) == ("bi", "n2", "d", B)
    assert (s.bim_owner.node, s.bim_owner.disk, s.bim_owner.uuid) == ("n1", "d", A)
    assert s.stuck_replicas == ("v-r-1",)
    # Without the foreign BIM the missing status entry is a copy still being created: no symptom.
    assert analyze(inventory(*objs)).symptoms == ()
    # On a Longhorn with full-hash names nothing is stuck by name.
    fixed = analyze(inventory(*objs, setting("current-longhorn-version", "v1.9.2"),
                              bim("backing-image-manager-5ae6-c012", "n1", A, IMG, ["bi"])))
    assert fixed.symptoms == () and fixed.informational and not fixed.actionable


def test_v1beta1_shapes_are_accepted():
    n = node("n1", {"d": disk_entry(A, "/d")})
    n["apiVersion"] = "longhorn.io/v1beta1"
    st = n["status"]["diskStatus"]["d"]
    st["conditions"] = {c["type"]: c for c in st["conditions"]}  # v1beta1: a map keyed by type
    del st["diskType"]
    del n["spec"]["disks"]["d"]["diskType"]
    bi = backing_image("bi", [], {})
    bi["spec"] = {"disks": {A: ""}}  # v1beta1 copies
    inv = inventory(n, bi)
    (d,) = inv.disks
    assert d.ready is True and d.type.value == "filesystem"
    assert inv.backing_images[0].spec_disks == {A}
