"""Backing Image Manager names, and which Longhorn versions name them by UUID prefix.

Longhorn names a BIM `backing-image-manager-<sha512(image)[:4]>-<diskUUID[:4]>` in every release
checked (lm `types/types.go` GetBackingImageManagerName at v1.4.0:336, v1.5.0:342, v1.6.0:360,
v1.7.2:385, v1.9.1:415). v1.9.2 switched to `bim-<sha256(image-uuid)>` (v1.9.2:416),
v1.10.2 to `bim-<sha224(...)>` (v1.10.2:424); the v1.8.x branch carries the sha256 naming after
v1.8.2 (branch v1.8.x:412; no later v1.8 release tag). `image` is the longhorn-manager flag
--backing-image-manager-image (`app/daemon.go:43,117 @v1.7.2`), mirrored in the Setting
`default-backing-image-manager-image` (`app/daemon.go:236 @v1.7.2`) and every BIM's spec.image
(`controller/backing_image_controller.go:925 @v1.7.2`).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping

from bimguard.model import Bim, prefix_of

SETTING_BIM_IMAGE = "default-backing-image-manager-image"
SETTING_VERSION = "current-longhorn-version"

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")
_PREFIX_NAME_RE = re.compile(r"^backing-image-manager-[0-9a-f]{4}-[0-9a-f]{4}$")
_FULL_HASH_NAME_RE = re.compile(r"^bim-[0-9a-f]{56}(?:[0-9a-f]{8})?$")


@functools.lru_cache(maxsize=64)
def image_prefix(image: str) -> str:
    """lm util.GetStringChecksum is SHA-512 hex; the name uses its first 4 characters."""
    return hashlib.sha512(image.encode()).hexdigest()[:4]


def prefix_bim_name(image: str, disk_uuid: str) -> str:
    return f"backing-image-manager-{image_prefix(image)}-{prefix_of(disk_uuid)}"


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    m = _VERSION_RE.match((text or "").strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def prefix_naming(version: tuple[int, int, int]) -> bool:
    """True when this Longhorn version names BIMs by disk-UUID prefix (affected by the bug)."""
    major, minor, patch = version
    if (major, minor) < (1, 8):
        return True
    if (major, minor) == (1, 8):
        return patch <= 2
    if (major, minor) == (1, 9):
        return patch <= 1
    return False


@dataclass(frozen=True, slots=True)
class LonghornInfo:
    version: str | None
    version_source: str | None
    affected: bool | None  # None: could not tell
    bim_image: str | None
    bim_image_source: str | None

    @property
    def image_prefix(self) -> str | None:
        return image_prefix(self.bim_image) if self.bim_image else None

    def expected_bim_name(self, disk_uuid: str) -> str | None:
        """The BIM name Longhorn wants for this disk, when it names BIMs by prefix."""
        if self.affected is False or not self.bim_image:
            return None
        return prefix_bim_name(self.bim_image, disk_uuid)


def _image_version(image: str) -> str | None:
    tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
    return tag if parse_version(tag) else None


def detect(settings: Mapping[str, str], bims: Iterable[Bim]) -> LonghornInfo:
    """Longhorn's version and BIM image, from settings first, then from the BIMs themselves."""
    live = [b for b in bims if not b.deleting]
    image, image_source = settings.get(SETTING_BIM_IMAGE) or None, None
    if image:
        image_source = f"setting {SETTING_BIM_IMAGE}"
    else:
        images = Counter(b.image for b in live if b.image)
        if images:
            image, image_source = images.most_common(1)[0][0], "spec.image of existing BIMs"

    version, source = settings.get(SETTING_VERSION) or None, None
    if version and parse_version(version):
        source = f"setting {SETTING_VERSION}"
    elif image and _image_version(image):
        version, source = _image_version(image), f"tag of {image}"
    else:
        version = None

    if version:
        parsed = parse_version(version)
        assert parsed is not None
        return LonghornInfo(version, source, prefix_naming(parsed), image, image_source)

    names = [b.name for b in live]
    if any(_FULL_HASH_NAME_RE.match(n) for n in names):
        return LonghornInfo(None, "full-hash BIM names (v1.9.2 or later)", False, image, image_source)
    if any(_PREFIX_NAME_RE.match(n) for n in names):
        return LonghornInfo(None, "prefix BIM names (v1.9.1 or earlier)", True, image, image_source)
    return LonghornInfo(None, None, None, image, image_source)
