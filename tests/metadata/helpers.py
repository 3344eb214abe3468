"""HTTP helpers of the metadata tests: a request to /latest/meta-data from a chosen loopback
source address (all of 127.0.0.0/8 is local), and upstream's field types (upstream-tenant.md §10)."""

from __future__ import annotations

import http.client
import json

PATH = "/latest/meta-data"

# upstream's InstanceMetadata field types
BASE_TYPES = {"instance-id": str, "local-hostname": str, "description": str, "kaktus": str, "vcpu": int,
              "mem_gb": int, "local-ipv4": str, "subnet_cidr": str, "template": str, "monthly_cost": str,
              "project": str, "domain": str, "zone": str, "region": str, "tags": list, "peers": list}
VIP_TYPES = {"vrrp_id": int, "interface": str, "vip": str, "priority": int, "mask": int, "public": bool}
KAWAII_LISTS = ("peering_interfaces", "public_vip_addresses", "virtual_ips", "fw_input_extra_networks",
                "fw_input_rules", "fw_output_rules", "fw_forward_rules", "fw_nat_rules", "ipsec_connections")


def conn(kahuna, source: str = "127.0.0.1") -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", kahuna.http_port, timeout=10, source_address=(source, 0))


def get(c: http.client.HTTPConnection, headers: dict) -> tuple[int, dict, dict]:
    c.request("GET", PATH, headers=headers)
    r = c.getresponse()
    body = r.read()
    return r.status, (json.loads(body) if body else {}), {k.lower(): v for k, v in r.getheaders()}


def check_types(doc: dict, types: dict) -> None:
    for key, kind in types.items():
        assert isinstance(doc[key], kind) and not (kind is int and isinstance(doc[key], bool)), (key, doc[key])
