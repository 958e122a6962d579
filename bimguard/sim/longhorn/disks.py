"""Disk directories of simulated nodes and the ``longhorn-disk.cfg`` file on them.

A simulated node's host filesystem is ``<root>/<node>/``; a Longhorn disk with host path ``P`` lives
in ``<root>/<node>/<P>``. The cfg file is exactly what longhorn-manager writes: one line of
compact JSON, keys ``diskName, diskUUID, diskDriver`` in that order, no trailing newline, mode 0644
(lm v1.7.2 ``util/util.go:637-641``, ``controller/monitor/disk_utils.go:133``; go-common-libs
``ns.WriteFile``, ``vendor/github.com/longhorn/go-common-libs/ns/file.go:236 @v1.7.2``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

DISK_CONFIG_FILE = "longhorn-disk.cfg"  # lm v1.7.2 util/util.go:72
REPLICA_DIRECTORY = "replicas"
_REPLICA_DIR_PATTERN = re.compile(r".*-[a-zA-Z0-9]{8}$")  # lm v1.7.2 util/util.go:687
BACKING_IMAGE_DIRECTORY = "backing-images"  # lm v1.7.2 types/types.go:104-105
VOLUME_META = "volume.meta"


@dataclass(frozen=True)
class DiskConfig:
    disk_name: str
    disk_uuid: str
    disk_driver: str = ""


def encode_cfg(cfg: DiskConfig) -> bytes:
    """Go ``json.Marshal`` of ``util.DiskConfig``: compact, fixed key order, no newline."""
    doc = {"diskName": cfg.disk_name, "diskUUID": cfg.disk_uuid, "diskDriver": cfg.disk_driver}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_cfg(raw: bytes) -> DiskConfig:
    """Parse like Go ``json.Unmarshal`` into ``DiskConfig``: unknown keys ignored, missing ones empty.

    Raises ValueError with a Longhorn-like message on anything that is not a JSON object.
    """
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{_go_json_error(text, exc)}") from exc
    if not isinstance(doc, dict):
        raise ValueError("json: cannot unmarshal into Go value of type util.DiskConfig")
    return DiskConfig(
        disk_name=str(doc.get("diskName") or ""),
        disk_uuid=str(doc.get("diskUUID") or ""),
        disk_driver=str(doc.get("diskDriver") or ""),
    )


def _go_json_error(text: str, exc: json.JSONDecodeError) -> str:
    # Go's encoding/json says "unexpected end of JSON input" for empty/truncated input and
    # "invalid character 'x' looking for beginning of value" otherwise; close enough for messages.
    if not text.strip() or exc.pos >= len(text):
        return "unexpected end of JSON input"
    return f"invalid character {text[exc.pos]!r} looking for beginning of value"


def host_dir(root: Path, node: str, host_path: str) -> Path:
    """Directory on the real filesystem that stands for ``host_path`` on simulated ``node``."""
    rel = host_path.lstrip("/")
    return root / node / rel


def write_cfg_exclusive(disk_dir: Path, cfg: DiskConfig) -> None:
    """Create the cfg only if absent (Longhorn never overwrites one,
    ``controller/monitor/disk_utils.go:148-151 @v1.7.2``), plus ``replicas/``.

    Written like ``ns.WriteFile`` (0644) followed by the ``replicas`` directory and an fsync.
    """
    path = disk_dir / DISK_CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, encode_cfg(cfg))
        os.fsync(fd)
    finally:
        os.close(fd)
    (disk_dir / REPLICA_DIRECTORY).mkdir(exist_ok=True)


def replace_cfg_atomically(disk_dir: Path, cfg: DiskConfig) -> None:
    """Test/demo helper: rewrite the cfg the safe way (temp file + rename, docs/design.md,
    invariant 4), never absent."""
    tmp = disk_dir / f".{DISK_CONFIG_FILE}.tmp"
    tmp.write_bytes(encode_cfg(cfg))
    os.chmod(tmp, 0o644)
    os.replace(tmp, disk_dir / DISK_CONFIG_FILE)


@dataclass(frozen=True)
class DiskStat:
    """What ``statfs`` gives the monitor (``controller/monitor/disk_monitor.go:299 @v1.7.2``)."""

    fsid: str
    storage_maximum: int
    storage_available: int
    fs_type: str = "ext2/ext3"


def simulated_fsid(disk_dir: Path) -> str:
    """Each disk directory is its own simulated filesystem.

    On the test machine every disk directory sits on one real filesystem, so the real fsid would
    make Longhorn's same-fsid rule (lm v1.7.2 node_controller.go:740) mark all but one disk NotReady.
    Two spec disks that point at the *same* directory still share an fsid, as on a real node.
    """
    return hashlib.sha256(str(disk_dir.resolve()).encode()).hexdigest()[:16]


def possible_replica_directories(disk_dir: Path) -> set[str]:
    """Names under ``replicas/`` that look like replica data dirs (lm v1.7.2 util/util.go:673-697)."""
    base = disk_dir / REPLICA_DIRECTORY
    try:
        entries = list(base.iterdir())
    except OSError:
        return set()
    return {e.name for e in entries if e.is_dir() and _REPLICA_DIR_PATTERN.fullmatch(e.name)}
