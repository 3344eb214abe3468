"""The NoCloud seed image: an ISO 9660 volume labelled `cidata` holding the three files at its root.

Built in memory with pycdlib (pure Python, maintained), Joliet and Rock Ridge so that Linux mounts
show the exact names `user-data`, `meta-data`, `network-config` (ISO 9660 level-3 names cannot
hold `-`; they are only the fallback) and Windows' cloudbase-init finds them through Joliet.
Upstream writes temp files and uses kdomanski/iso9660; nothing touches the disk here.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import pycdlib

LABEL = "cidata"


def _iso_name(name: str) -> str:
    return "/" + name.upper().replace("-", "_").replace(".", "_")[:30] + ".;1"


def build_iso(files: Mapping[str, str | bytes]) -> bytes:
    """An ISO image with `files` (name -> content) at its root, volume label `cidata`."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
    try:
        for name in sorted(files):
            if not name or "/" in name or len(name) > 64:
                raise ValueError(f"cloud-init file name {name!r} is not a plain root file name")
            content = files[name]
            data = content.encode() if isinstance(content, str) else bytes(content)
            iso.add_fp(io.BytesIO(data), len(data), iso_path=_iso_name(name), rr_name=name,
                       joliet_path="/" + name, file_mode=0o100444)
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def read_iso(data: bytes) -> dict[str, str]:
    """The root files of an ISO image as a NoCloud reader sees them (Rock Ridge names, else
    Joliet, else ISO 9660 names lowercased), decoded as UTF-8. Raises ValueError if not an ISO."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
    except pycdlib.pycdlibexception.PyCdlibException as e:
        raise ValueError(f"not an ISO 9660 image: {e}") from None
    try:
        out: dict[str, str] = {}
        if iso.has_rock_ridge():
            facade, kind = iso.get_rock_ridge_facade(), "rr"
        elif iso.has_joliet():
            facade, kind = iso.get_joliet_facade(), "joliet"
        else:
            facade, kind = iso.get_iso9660_facade(), "iso"
        for child in facade.list_children("/"):
            if child.is_dot() or child.is_dotdot() or not child.is_file():
                continue
            if kind == "rr":
                name = child.rock_ridge.name().decode()
            elif kind == "joliet":
                name = child.file_identifier().decode("utf-16_be").split(";")[0]
            else:
                name = child.file_identifier().decode().split(";")[0].rstrip(".").lower()
            buf = io.BytesIO()
            facade.get_file_from_iso_fp(buf, f"/{name}" if kind != "iso" else "/" + child.file_identifier().decode())
            out[name] = buf.getvalue().decode("utf-8")
        return out
    finally:
        iso.close()


def volume_label(data: bytes) -> str:
    """The primary volume identifier (what blkid reports as LABEL for an ISO)."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        return iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()
