"""Scan reports: the JSON document (schemaVersion 1, documented in README.md) and the table."""

from __future__ import annotations

from typing import Any

from bimguard.findings import Findings
from bimguard.model import Disk

SCHEMA_VERSION = 1
EXIT_OK, EXIT_COLLISIONS_OR_INCOMPLETE = 0, 1


def _disk_ref(disk: Disk) -> dict[str, str]:
    return {"node": disk.node, "disk": disk.name}


def to_json(f: Findings, source: dict[str, Any]) -> dict[str, Any]:
    info = f.longhorn
    collisions = []
    for plan in f.plans:
        disks = []
        for d, deps in zip(plan.group.disks, plan.dependents):
            wanted = info.expected_bim_name(d.uuid)
            owned = sorted(deps.bims, key=lambda name: name != wanted)  # the colliding name first
            disks.append({
                "node": d.node,
                "disk": d.name,
                "uuid": d.uuid,
                "path": d.path,
                "replicas": len(deps.replicas),
                "backingImageCopies": len(deps.backing_image_copies),
                "ownsBim": owned[0] if owned else None,
            })
        collisions.append({
            "prefix": plan.group.prefix,
            "kind": plan.group.kind,
            "informational": f.informational,
            "bimName": info.expected_bim_name(plan.group.prefix) if info.bim_image else None,
            "disks": disks,
            "keep": {**_disk_ref(plan.keep), "reason": plan.keep_reason},
            "regenerate": [
                {**_disk_ref(r.disk), "needsEviction": r.needs_eviction, "reason": r.reason}
                for r in plan.regenerate
            ],
        })
    to_repair = 0 if f.informational else len(collisions)
    skipped = len(f.skipped)
    if to_repair:
        verdict = "collisions"
    elif skipped:
        verdict = "incomplete"
    elif collisions:
        verdict = "informational"
    else:
        verdict = "no-collision"
    return {
        "schemaVersion": SCHEMA_VERSION,
        "source": source,
        "result": {
            "verdict": verdict,
            "complete": not skipped,
            "collisionsToRepair": to_repair,
            "skipped": skipped,
        },
        "longhorn": {
            "version": info.version,
            "versionSource": info.version_source,
            "affected": info.affected,
            "bimImage": info.bim_image,
            "bimImagePrefix": info.image_prefix,
        },
        "disks": {
            "total": f.disks_total,
            "v1": f.disks_v1,
            "v2": f.disks_v2,
            "withoutUuid": f.disks_without_uuid,
        },
        "collisions": collisions,
        "symptoms": [
            {
                "backingImage": s.backing_image,
                "node": s.node,
                "disk": s.disk,
                "diskUUID": s.disk_uuid,
                "expectedBimName": s.expected_bim_name,
                "bimOwner": {"node": s.bim_owner.node, "disk": s.bim_owner.disk, "uuid": s.bim_owner.uuid},
                "stuckReplicas": list(s.stuck_replicas),
            }
            for s in f.symptoms
        ],
        "skipped": [{"source": s.source, "kind": s.kind, "name": s.name, "error": s.error} for s in f.skipped],
        "probability": {
            "v1DisksWithUuid": f.v1_disks_with_uuid,
            # + 0.0: no disks gives -expm1(0.0) == -0.0, which would print as "-0 %"
            "nextDiskCollides": f.next_disk_collides + 0.0,
            "birthday": f.birthday + 0.0,
        },
    }


def exit_code(report: dict[str, Any]) -> int:
    """0 only for a complete scan with nothing to repair; 1 for collisions to repair or anything skipped."""
    if report["result"]["verdict"] in ("no-collision", "informational"):
        return EXIT_OK
    return EXIT_COLLISIONS_OR_INCOMPLETE


def _pct(p: float) -> str:
    return f"{p * 100:.3g} %"


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def to_table(report: dict[str, Any]) -> str:
    """A human summary rendered from the JSON report, so both outputs always agree."""
    lh, disks = report["longhorn"], report["disks"]
    out = [f"bimguard scan of {report['source']['description']}"]
    version = lh["version"] or "version unknown"
    how = f" ({lh['versionSource']})" if lh["versionSource"] else ""
    verdict = {
        True: "AFFECTED: BIM names use the first 4 characters of the disk UUID",
        False: "not affected: BIM names use the whole disk UUID (collisions below are informational)",
        None: "cannot tell whether BIM names use the UUID prefix (no version setting, no BIMs): treated as affected",
    }[lh["affected"]]
    out.append(f"Longhorn {version}{how}: {verdict}")
    if lh["bimImage"]:
        out.append(f"BIM image {lh['bimImage']} (name prefix {lh['bimImagePrefix']})")
    out.append(
        f"Disks: {disks['total']} ({disks['v1']} v1, {disks['v2']} v2; {disks['withoutUuid']} without a UUID yet)"
    )
    for c in report["collisions"]:
        label = "duplicate UUID (cloned disk)" if c["kind"] == "duplicate-uuid" else "shared prefix"
        wants = f", all want {c['bimName']}" if c["bimName"] else ""
        note = " [informational]" if c["informational"] else ""
        out.append("")
        out.append(f"COLLISION {c['prefix']}: {label}, {len(c['disks'])} disks{wants}{note}")
        rows = [["NODE", "DISK", "UUID", "PATH", "REPLICAS", "BI COPIES", "OWNS BIM"]]
        rows += [
            [d["node"], d["disk"], d["uuid"], d["path"], str(d["replicas"]), str(d["backingImageCopies"]),
             d["ownsBim"] or "-"]
            for d in c["disks"]
        ]
        out += _table(rows)
        out.append(f"  keep        {c['keep']['node']}/{c['keep']['disk']}: {c['keep']['reason']}")
        for r in c["regenerate"]:
            out.append(f"  regenerate  {r['node']}/{r['disk']}: {r['reason']}")
    if report["symptoms"]:
        out.append("")
        out.append(f"STUCK backing-image copies: {len(report['symptoms'])}")
        for s in report["symptoms"]:
            where = f"{s['node']}/{s['disk']}" if s["node"] else "no known disk"
            owner = s["bimOwner"]
            owner_txt = f"{owner['node']}/{owner['disk'] or '?'} ({owner['uuid']})"
            stuck = ", ".join(s["stuckReplicas"]) or "none"
            out.append(
                f"  {s['backingImage']} on {where} ({s['diskUUID']}): needs {s['expectedBimName']}, "
                f"which belongs to {owner_txt}; waiting replicas: {stuck}"
            )
    if report["skipped"]:
        out.append("")
        out.append(f"SKIPPED {len(report['skipped'])} object(s) that could not be read:")
        for s in report["skipped"]:
            out.append(f"  {s['kind']} {s['name']} in {s['source']}: {s['error']}")
    p = report["probability"]
    out.append("")
    out.append(
        f"Risk: {p['v1DisksWithUuid']} v1 disks; the next new disk collides with {_pct(p['nextDiskCollides'])} "
        f"chance; {p['v1DisksWithUuid']} random UUIDs share a prefix with {_pct(p['birthday'])} chance"
    )
    out.append(result_line(report["result"]))
    return "\n".join(out) + "\n"


def result_line(result: dict[str, Any]) -> str:
    skipped = result["skipped"]
    incomplete = (f"incomplete: {skipped} object(s) skipped (listed above), and a skipped disk could collide too"
                  if skipped else "")
    verdict = result["verdict"]
    if verdict == "collisions":
        text = f"{result['collisionsToRepair']} collision group(s) to repair" + (f"; {incomplete}" if skipped else "")
    elif verdict == "incomplete":
        text = f"{incomplete}; no collision among the objects read"
    elif verdict == "informational":
        text = "no repair needed on this Longhorn version"
    else:
        text = "no collision"
    return f"Result: {text}"
