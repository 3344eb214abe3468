"""Read a NoCloud `cidata` ISO the way a booting appliance does: its root files `user-data`,
`meta-data`, `network-config`. Kept in the sim (pycdlib) so that the sim does not depend on
Kahuna's own ISO code -- a test then checks one against the other."""

from __future__ import annotations

import io
from typing import Any

import yaml

from .model import SimError

NOCLOUD_FILES = ("user-data", "meta-data", "network-config", "vendor-data")


def read_iso(data: bytes) -> dict[str, str]:
    """{file name: text} of the ISO's root directory (Rock Ridge / Joliet names preferred)."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
    except (PyCdlibException, ValueError, OSError) as exc:
        raise SimError(f"not an ISO 9660 image: {exc}") from None
    try:
        files: dict[str, str] = {}
        facade, kw = _facade(iso)
        for child in iso.list_children(**{kw: "/"}):
            if child is None or child.is_dir() or child.is_dot() or child.is_dotdot():
                continue
            name = _name(iso, child, kw)
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, **{kw: "/" + (name if kw != "iso_path" else _raw(child))})
            files[name] = out.getvalue().decode("utf-8", "replace")
        return files
    finally:
        iso.close()


def _facade(iso: Any) -> tuple[str, str]:
    if iso.has_rock_ridge():
        return "rr", "rr_path"
    if iso.has_joliet():
        return "joliet", "joliet_path"
    return "iso", "iso_path"


def _raw(child: Any) -> str:
    return child.file_identifier().decode()


def _name(iso: Any, child: Any, kw: str) -> str:
    if kw == "rr_path" and child.rock_ridge is not None:
        return child.rock_ridge.name().decode()
    if kw == "joliet_path":
        return child.file_identifier().decode("utf-16_be")
    raw = _raw(child).split(";", 1)[0].rstrip(".").lower()   # USER_DAT.;1 -> user_dat
    for known in NOCLOUD_FILES:
        if raw.replace("_", "-") == known[: len(raw)]:
            return known
    return raw


def iso_label(data: bytes) -> str:
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        return iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()


def meta_data(files: dict[str, str]) -> dict[str, Any]:
    """The parsed `meta-data` (YAML, as cloud-init reads it)."""
    text = files.get("meta-data")
    if text is None:
        raise SimError("no meta-data on the cloud-init ISO")
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise SimError("meta-data is not a YAML mapping")
    return doc
