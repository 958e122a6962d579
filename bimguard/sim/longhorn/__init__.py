"""Simulated Longhorn (longhorn-manager subset) for the cluster emulator.

Behaviour follows the longhorn-manager source, cited next to the code as ``lm <file>:<line>``
at tag v1.7.2 unless another tag is named (github.com/longhorn/longhorn-manager). What differs
between the release lines the emulator models (v1.7.2, v1.8.x, v1.9.x) is gathered in
:class:`Release`; ``bimguard/sim/README.md`` lists what is emulated and what is not.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "longhorn-system"
GROUP = "longhorn.io"
VERSION = "v1beta2"


@dataclass(frozen=True)
class Release:
    """The Longhorn release an emulated cluster runs, and the behaviours that depend on it."""

    version: str = "v1.7.2"

    @property
    def _parts(self) -> tuple[int, int, int]:
        nums = (self.version.lstrip("v").split("-")[0].split(".") + ["0", "0", "0"])[:3]
        return int(nums[0]), int(nums[1]), int(nums[2])

    @property
    def line(self) -> tuple[int, int]:
        return self._parts[:2]

    @property
    def storage_scheduled_counts_backing_images(self) -> bool:
        """v1.8+: ``storageScheduled`` adds ``status.realSize`` of every BackingImage whose
        ``spec.diskFileSpecMap`` names the disk, listed in ``scheduledBackingImage``
        (lm v1.8.1 controller/node_controller.go:853-856,888-919)."""
        return self.line >= (1, 8)

    @property
    def orphan_auto_deletion_setting(self) -> str:
        """v1.7/v1.8: boolean ``orphan-auto-deletion``; v1.9: ``orphan-resource-auto-deletion``, a
        ``;``-separated list of ``replica-data`` / ``instance`` (lm v1.9.0 types/setting.go:103,1063-1076)."""
        return "orphan-resource-auto-deletion" if self.line >= (1, 9) else "orphan-auto-deletion"

    @property
    def backing_image_eviction_guarded(self) -> bool:
        """Whether syncBackingImageEvictionRequested checks that ``spec.diskFileSpecMap[U]``
        exists before dereferencing it on an evicting disk: only from v1.7.4, v1.8.2, v1.9.1
        (lm v1.9.1 node_controller.go:1670-1689). Before, a status entry without its spec entry
        on an evicting disk or node panics the manager (lm v1.7.2 node_controller.go:1806,1811;
        v1.8.1 :1635; v1.9.0 :1680)."""
        major, minor, patch = self._parts
        return (minor == 7 and patch >= 4) or (minor == 8 and patch >= 2) or (minor == 9 and patch >= 1) or minor > 9

    def backing_image_eviction_panic_site(self, evicting: bool) -> str:
        """Where that dereference is in this release's node_controller.go."""
        major, minor, patch = self._parts
        if minor == 8:
            return "node_controller.go:1635"  # v1.8.1 (the non-evicting branch is guarded)
        if minor == 9:
            return "node_controller.go:1680"  # v1.9.0
        return "node_controller.go:1806" if evicting else "node_controller.go:1811"  # v1.7.2

    @property
    def non_evicting_branch_guarded(self) -> bool:
        """The non-evicting branch got its guard earlier (lm v1.8.1 node_controller.go:1640,
        v1.9.0 :1685), the evicting one did not."""
        return self.line >= (1, 8) or self.backing_image_eviction_guarded

    @property
    def replica_data_engine_in_bi_spec(self) -> bool:
        """v1.8+: BackingImage ``diskFileSpecMap`` entries carry ``dataEngine``
        (lm v1.8.1 controller/replica_controller.go:405-446)."""
        return self.line >= (1, 8)

    @property
    def lowercase_backing_image_error(self) -> bool:
        """"The backing image %v can not be put on the disk %v" became "backing image ..." in
        v1.7.4 and v1.9.0 (lm controller/replica_controller.go:427; v1.8.2 still capitalised)."""
        major, minor, patch = self._parts
        return (minor == 7 and patch >= 4) or minor >= 9

    @property
    def backing_image_real_size(self) -> bool:
        """v1.8+: BackingImage ``status.realSize`` (lm v1.8.1 k8s/pkg/apis/longhorn/v1beta2/backingimage.go:95)."""
        return self.line >= (1, 8)

    @property
    def keeps_copies_in_use_when_evicting(self) -> bool:
        """v1.8.2, v1.9.1: an evicting copy still used by a replica is not deleted
        (lm v1.9.1 controller/backing_image_controller.go:906-913,921-930)."""
        major, minor, patch = self._parts
        return (minor == 8 and patch >= 2) or (minor == 9 and patch >= 1) or minor > 9

    @property
    def eviction_ticket_needs_candidates(self) -> bool:
        """v1.8.1+: the volume-eviction controller attaches a volume only when every replica would
        find a disk (lm v1.8.1 controller/volume_eviction_controller.go:206-242)."""
        return self.line >= (1, 8)

    @property
    def disk_removal_message(self) -> str:
        """lm webhook/resources/node/validator.go:196 (v1.7.2, v1.8.1 :188); v1.9.0 :188 names
        backing images too. The first argument is the disk *name* and the second its path, and
        the message ends with a space, all as in Longhorn."""
        what = "replicas and backing images" if self.line >= (1, 9) else "replicas"
        return "Delete Disk on node {name} error: Please disable the disk {path} and remove all " + what + " first "


DEFAULT_RELEASE = Release()
