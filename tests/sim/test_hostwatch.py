"""The cfg watch (bimguard.sim.hostwatch) against real files: each way a cfg can change is told apart,
and directories that appear after the watch started are watched too."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bimguard.rewrite_cfg import main as rewrite_cfg_main
from bimguard.sim.hostwatch import CfgWatch
from bimguard.sim.longhorn import disks


async def test_each_change_of_a_cfg_is_told_apart(tmp_path: Path) -> None:
    root = tmp_path / "hosts"
    with CfgWatch(root) as watch:
        d = root / "worker-1" / "mnt" / "disk-a"  # appears after the watch started
        d.mkdir(parents=True)
        watch.flush()
        disks.write_cfg_exclusive(d, disks.DiskConfig("disk-a", "0f1e0000-0000-4000-8000-000000000001"))
        watch.flush()
        disks.replace_cfg_atomically(d, disks.DiskConfig("disk-a", "0f1e0000-0000-4000-8000-000000000002"))
        watch.flush()
        assert [e.kind for e in watch.events] == ["created", "replaced"]
        assert not watch.absences() and not watch.in_place_writes()

        with open(d / disks.DISK_CONFIG_FILE, "r+b") as f:  # a write over the file itself
            f.write(b"{")
        watch.flush()
        (d / disks.DISK_CONFIG_FILE).unlink()
        watch.flush()
        assert [e.kind for e in watch.events] == ["created", "replaced", "written", "removed"]
        assert [e.disk_dir for e in watch.absences()] == [d]
    assert not watch.overflowed


async def test_a_directory_created_with_a_cfg_in_it_is_recorded_and_watched(tmp_path: Path) -> None:
    root = tmp_path / "hosts"
    staged = tmp_path / "staged" / "disk-b"
    staged.mkdir(parents=True)
    disks.write_cfg_exclusive(staged, disks.DiskConfig("disk-b", "0f1e0000-0000-4000-8000-000000000003"))
    with CfgWatch(root) as watch:
        (root / "worker-2").mkdir(parents=True)
        watch.flush()
        os.rename(staged.parent, root / "worker-2" / "mnt")  # a whole tree moved in
        watch.flush()
        target = root / "worker-2" / "mnt" / "disk-b"
        os.rename(target / disks.DISK_CONFIG_FILE, target / "moved-away")
        watch.flush()
    assert [(e.kind, e.disk_dir) for e in watch.events] == [("created", target), ("removed", target)]


async def test_the_rewriter_replaces_the_cfg_whole(tmp_path: Path) -> None:
    """`bimguard rewrite-cfg` (the on-node compare-and-swap) is seen as one `replaced`: never absent,
    never written in place."""
    root = tmp_path / "hosts"
    d = root / "worker-1" / "var" / "lib" / "longhorn"
    d.mkdir(parents=True)
    old, new = "0f1e0000-0000-4000-8000-000000000004", "a1b20000-0000-4000-8000-000000000005"
    disks.write_cfg_exclusive(d, disks.DiskConfig("default-disk", old))
    with CfgWatch(root) as watch:
        code = await asyncio.to_thread(rewrite_cfg_main, ["--path", str(d), "--disk-name", "default-disk",
                                                          "--old", old, "--new", new])
        watch.flush()
    assert code == 0
    assert [e.kind for e in watch.events] == ["replaced"]
    assert disks.decode_cfg((d / disks.DISK_CONFIG_FILE).read_bytes()).disk_uuid == new
