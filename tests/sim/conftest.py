"""Fixtures of the sim tests: the in-process hub of tests/hub (trio tests), ISO building."""

from __future__ import annotations

import io

import pycdlib
import yaml

from tests.hub.conftest import credentials, hub, start_hub  # noqa: F401  (fixtures)


def build_cidata(files: dict[str, str]) -> bytes:
    """A NoCloud ISO as genisoimage -J -r would make it (independent of Kahuna's builder)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    for i, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def appliance_files(agent_id: str, key: str, hub_url: str, metadata_url: str, *,
                    instance_id: str = "65f000000000000000000001", token: str = "tok-1") -> dict[str, str]:
    meta = {"instance-id": instance_id, "cloud-name": "kowabunga", "region": "r1",
            "availability-zone": "z1", "kowabunga_local_ip": "10.0.0.10",
            "kowabunga_metadata_uri": metadata_url, "kowabunga_metadata_token": token,
            "kowabunga_controller_uri": hub_url, "kowabunga_controller_agent_id": agent_id,
            "kowabunga_controller_agent_token": key}
    return {"user-data": "#cloud-config\nhostname: kw1\n", "meta-data": yaml.safe_dump(meta),
            "network-config": "version: 2\n"}
