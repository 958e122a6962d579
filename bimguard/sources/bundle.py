"""Read a Longhorn support bundle, zipped or extracted.

Layout written by rancher/support-bundle-kit (`pkg/manager/cluster.go:35-81`,
`pkg/manager/collectors/default.go:38` @v0.0.45):
`supportbundle_<...>/yamls/namespaced/<namespace>/<groupVersion>/<resource>.yaml`, each a YAML
`List`, with "" and some nulls rewritten to the string "null" and numbers as floats
(`pkg/manager/collectors/common.go:61-68 @v0.0.45`). Only the Longhorn resources the scan needs
are read.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path

from bimguard.decode import InputError, decode_yaml
from bimguard.inventory import Inventory
from bimguard.objects import LONGHORN_GROUP, PLURALS
from bimguard.sources.dump import read_stream

_WANTED = "|".join(PLURALS.values())
_MEMBER_RE = re.compile(
    rf"^(?:.*/)?yamls/namespaced/(?P<ns>[^/]+)/{re.escape(LONGHORN_GROUP)}/(?P<ver>[^/]+)/(?P<res>{_WANTED})\.yaml$"
)
# A member larger than this is not a Longhorn resource list; refuse it rather than exhaust memory.
MAX_MEMBER_BYTES = 2 * 1024**3


def _not_a_bundle(path: str, why: str) -> InputError:
    return InputError(
        f"{path}: not a Longhorn support bundle ({why}; expected "
        f"yamls/namespaced/<namespace>/{LONGHORN_GROUP}/<version>/nodes.yaml)"
    )


def _looks_like_a_dump(p: Path) -> bool:
    """A JSON or YAML file (text), as opposed to a zip or something else."""
    try:
        with p.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if not head.strip() or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a character cut at the end of the sample
            return False
    return True


def read_bundle(path: str) -> Inventory:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or directory")
    if p.is_file() and not zipfile.is_zipfile(p) and _looks_like_a_dump(p):
        raise InputError(f"{path}: a JSON or YAML file, not a Longhorn support bundle (a .zip or its extracted "
                         f"directory): for a kubectl dump use --from-dump {path}")
    if p.is_dir():
        members = {
            str(f.relative_to(p)): f for f in sorted(p.rglob("*.yaml")) if _MEMBER_RE.match(f.relative_to(p).as_posix())
        }
        if not any(_MEMBER_RE.match(m)["res"] == "nodes" for m in members):  # type: ignore[index]
            raise _not_a_bundle(path, "no Longhorn nodes.yaml in this directory")
        inv = Inventory()
        for name, file in members.items():
            try:
                with file.open("rb") as f:
                    data = read_stream(f, str(file), MAX_MEMBER_BYTES)
            except OSError as err:
                raise InputError(f"{file}: cannot read: {err.strerror or err}") from None
            decode_yaml(data, f"{path}:{name}", inv, bundle=True)
        return inv
    if not zipfile.is_zipfile(p):
        raise _not_a_bundle(path, "neither a directory nor a zip file")
    try:
        with zipfile.ZipFile(p) as zf:
            infos = sorted((i for i in zf.infolist() if _MEMBER_RE.match(i.filename)), key=lambda i: i.filename)
            if not any(_MEMBER_RE.match(i.filename)["res"] == "nodes" for i in infos):  # type: ignore[index]
                raise _not_a_bundle(path, "the zip holds no Longhorn nodes.yaml")
            inv = Inventory()
            for info in infos:
                if info.file_size > MAX_MEMBER_BYTES:
                    raise InputError(f"{path}:{info.filename}: {info.file_size:,} bytes is too large for a resource list")
                decode_yaml(zf.read(info), f"{path}:{info.filename}", inv, bundle=True)
            return inv
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: unreadable zip: {err}") from None
    except (NotImplementedError, RuntimeError) as err:  # zipfile's words for a version or compression
        # method it cannot read, and for an encrypted member
        raise InputError(f"{path}: unreadable zip: {err}") from None
