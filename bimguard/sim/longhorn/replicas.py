"""The replica controller's backing-image step, pure.

lm v1.7.2 controller/replica_controller.go:407-446 GetBackingImagePathForReplicaStarting: a replica
with ``spec.backingImage`` that is *starting* on disk U asks for the file by adding U to the
BackingImage's ``spec.diskFileSpecMap``, then waits (condition ``WaitForBackingImage=True``,
reason ``Waiting``, ``currentState: stopped``) until ``status.diskFileStatusMap[U].state ==
ready``. The volume model (health, eviction, rebuilds) is in ``volumes.py`` and
``volume_controller.py``.
"""

from __future__ import annotations

from typing import Any, Mapping


def backing_image_wait_state(replica: Mapping[str, Any], bi: Mapping[str, Any] | None) -> tuple[str, str]:
    """("add-spec" | "wait" | "ready", current file state) for a replica's backing image on its disk."""
    disk = replica["spec"].get("diskID", "")
    if bi is None or not (bi.get("status") or {}).get("uuid"):
        return "wait", ""
    spec_map = (bi.get("spec") or {}).get("diskFileSpecMap")
    if spec_map is None or disk not in spec_map:
        return "add-spec", ""
    fs = ((bi.get("status") or {}).get("diskFileStatusMap") or {}).get(disk)
    if not fs or fs.get("state") != "ready":
        return "wait", (fs or {}).get("state", "")
    return "ready", "ready"
