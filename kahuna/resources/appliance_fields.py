"""The network fields of Kawaii gateways, their IPsec connections and Konvey load balancers:
declared once, validated and defaulted as the 0.58 client models and upstream define them.

Pure (no I/O): the kinds (kahuna.resources.kawaii / konvey) use these declarations as their
fields, and anything that must check a firewall rule or an endpoint calls them. An invalid value
answers 400 naming the field path (`firewall.ingress[2].ports`); a missing required one 422.

Upstream's defaults: ingress `source` and egress `destination` 0.0.0.0/0, every `protocol`
tcp, `egress_policy` accept, VPC peering `policy` drop; IPsec `dpd_timeout_action` restart,
`dpd_timeout` 240s, `start_action` start, `rekey_time` 2h, phase lifetimes 1h. Upstream checks
only the port lists; protocols, CIDRs, DH groups and algorithms are checked here too (the client's
enums), so that a bad value is refused at the API rather than breaking nftables or strongSwan on
the appliance.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from kahuna.resources.types import IP, Bool, Enum, Field, Int, ListOf, Name, Obj, Str, check_object
from kahuna.resources.errors import Invalid

_PORT_ITEM = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")


def port_list(value: str, path: str) -> str:
    """`p` or `a-b` items, comma-separated, 1 <= p <= 65535, a <= b (upstream's
    IsValidPortListExpression); spaces around items are dropped."""
    items = [item.strip() for item in value.split(",")]
    if not value.strip() or not all(items):
        raise Invalid(f"{path}: expected a comma-separated list of ports or port ranges (e.g. 22,80-90)")
    for item in items:
        match = _PORT_ITEM.match(item)
        if not match:
            raise Invalid(f"{path}: {item!r} is not a port or a port range a-b")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise Invalid(f"{path}: {item!r}: ports are between 1 and 65535")
        if low > high:
            raise Invalid(f"{path}: {item!r}: a range goes from the lower port to the higher")
    return ",".join(items)


def ipv4_cidr(value: str, path: str) -> str:
    """An IPv4 network (`10.0.0.0/24`; a bare address is a /32); host bits must be zero."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise Invalid(f"{path}: {value!r} is not an IPv4 network in CIDR notation ({exc})") from None
    if network.version != 4:
        raise Invalid(f"{path}: {value!r}: only IPv4 networks are routed by Kawaii")
    return str(network)


def ipv4(value: str, path: str) -> str:
    if ipaddress.ip_address(value).version != 4:
        raise Invalid(f"{path}: {value!r} is not an IPv4 address")
    return value


def duration(value: str, path: str) -> str:
    """strongSwan's time values: an integer and s, m, h or d (`240s`, `2h`)."""
    if not _DURATION.match(value.strip()) or int(_DURATION.match(value.strip()).group(1)) == 0:
        raise Invalid(f"{path}: {value!r} is not a duration such as 240s, 30m, 2h or 1d")
    return value.strip()


def _unique_names(value: list[dict], path: str) -> list[dict]:
    seen: set[str] = set()
    for i, item in enumerate(value):
        if item["name"] in seen:
            raise Invalid(f"{path}[{i}].name: {item['name']!r} is used twice")
        seen.add(item["name"])
    return value


def _unique_ports(value: list[dict], path: str) -> list[dict]:
    seen: set[tuple[int, str]] = set()
    for i, item in enumerate(value):
        key = (item["port"], item["protocol"])
        if key in seen:
            raise Invalid(f"{path}[{i}].port: {item['protocol']} port {item['port']} is used by another endpoint")
        seen.add(key)
    return value


PROTOCOL = Enum(choices=("tcp", "udp"))
FW_PROTOCOL = Enum(choices=("tcp", "udp", "icmp"))
PORTS = Field("ports", Str(min_len=1, max_len=1024), required=True, validate=port_list)

INGRESS_RULE = Obj(fields=(
    Field("source", Str(max_len=43), default="0.0.0.0/0", validate=ipv4_cidr),
    Field("protocol", FW_PROTOCOL, default="tcp"),
    PORTS,
))
EGRESS_RULE = Obj(fields=(
    Field("destination", Str(max_len=43), default="0.0.0.0/0", validate=ipv4_cidr),
    Field("protocol", FW_PROTOCOL, default="tcp"),
    PORTS,
))
FIREWALL = Obj(fields=(
    Field("ingress", ListOf(item=INGRESS_RULE, max_items=1024), default=list),
    Field("egress_policy", Enum(choices=("accept", "drop")), default="accept"),
    Field("egress", ListOf(item=EGRESS_RULE, max_items=1024), default=list),
))
DNAT_RULE = Obj(fields=(
    Field("destination", IP(), required=True, validate=ipv4),  # a private address of the project
    Field("protocol", PROTOCOL, default="tcp"),
    PORTS,
))
FORWARD_RULE = Obj(fields=(Field("protocol", FW_PROTOCOL, default="tcp"), PORTS))
VPC_PEERING = Obj(fields=(
    Field("subnet", Str(min_len=1, max_len=64), required=True),  # a subnet id (checked by the kind)
    Field("policy", Enum(choices=("accept", "drop")), default="drop"),
    Field("ingress", ListOf(item=FORWARD_RULE, max_items=1024), default=list),
    Field("egress", ListOf(item=FORWARD_RULE, max_items=1024), default=list),
    Field("netip", ListOf(item=Obj(fields=())), read_only=True),
))
IPSEC_FIREWALL = Obj(fields=(Field("ingress", ListOf(item=INGRESS_RULE, max_items=1024), default=list),))

DH_GROUPS = {2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072", 16: "modp4096",
             17: "modp6144", 18: "modp8192", 19: "ecp256", 20: "ecp384", 21: "ecp521",
             22: "modp1024s160", 23: "modp2048s224", 24: "modp2048s256"}
INTEGRITY = Enum(choices=("SHA1", "SHA256", "SHA384", "SHA512"))
ENCRYPTION = Enum(choices=("AES128", "AES256", "CAMELLIA128", "CAMELLIA256"))


def _dh_group(value: int, path: str) -> int:
    if value not in DH_GROUPS:
        raise Invalid(f"{path}: Diffie-Hellman group {value} is not one of "
                      f"{', '.join(str(g) for g in DH_GROUPS)}")
    return value


def dh_group_name(number: int) -> str:
    """strongSwan's name of an IKE DH group (upstream mapped 5 to "": modp1536 here)."""
    return DH_GROUPS.get(int(number), "")


def _phase(n: int) -> tuple[Field, ...]:
    return (
        Field(f"phase{n}_lifetime", Str(max_len=16), default="1h", validate=duration),
        Field(f"phase{n}_dh_group_number", Int(), required=True, validate=_dh_group),
        Field(f"phase{n}_integrity_algorithm", INTEGRITY, required=True),
        Field(f"phase{n}_encryption_algorithm", ENCRYPTION, required=True),
    )


PSK_MIN, PSK_MAX = 8, 256
IPSEC_FIELDS: tuple[Field, ...] = (
    Field("id", Str(), read_only=True, db="_id"),
    Field("name", Name(), required=True),
    Field("description", Str(max_len=65536), default=""),
    Field("ip", Str(), read_only=True),
    Field("remote_ip", IP(), required=True, validate=ipv4),
    Field("remote_subnet", Str(max_len=43), required=True, validate=ipv4_cidr),
    # write-only on the API for all but superAdmin and the project's admins; stored sealed
    Field("pre_shared_key", Str(min_len=PSK_MIN, max_len=PSK_MAX), required=True, write_only=True),
    Field("dpd_timeout_action", Enum(choices=("clear", "trap", "restart")), default="restart"),
    Field("dpd_timeout", Str(max_len=16), default="240s", validate=duration),
    Field("start_action", Enum(choices=("none", "start", "trap")), default="start"),
    Field("rekey_time", Str(max_len=16), default="2h", validate=duration),
) + _phase(1) + _phase(2) + (
    Field("firewall", IPSEC_FIREWALL, default=lambda: {"ingress": []}),
)

ENDPOINT = Obj(fields=(
    Field("name", Name(), required=True),
    Field("port", Int(low=1, high=65535), required=True),
    Field("protocol", PROTOCOL, required=True),
    Field("backends", Obj(fields=(
        Field("hosts", ListOf(item=IP(), max_items=256), required=True, validate=lambda v, p: _hosts(v, p)),
        Field("port", Int(low=1, high=65535), required=True),
    )), required=True),
))
ENDPOINTS = ListOf(item=ENDPOINT, max_items=256)
FAILOVER = Field("failover", Bool(), default=True, create_only=True)  # the 0.58 client's default; set at creation


def _hosts(value: list[str], path: str) -> list[str]:
    if not value:
        raise Invalid(f"{path}: an endpoint needs at least one backend host")
    for i, host in enumerate(value):
        ipv4(host, f"{path}[{i}]")
    return value


def firewall(value: Any, path: str = "firewall") -> dict:
    return FIREWALL.check(value if value is not None else {}, path)


def dnat(value: Any, path: str = "dnat") -> list[dict]:
    return ListOf(item=DNAT_RULE, max_items=1024).check(value if value is not None else [], path)


def vpc_peerings(value: Any, path: str = "vpc_peerings") -> list[dict]:
    return ListOf(item=VPC_PEERING, max_items=16).check(value if value is not None else [], path)


def endpoints(value: Any, path: str = "endpoints") -> list[dict]:
    out = ENDPOINTS.check(value, path)
    return _unique_ports(_unique_names(out, path), path)


def ipsec(payload: dict, *, partial: bool = False) -> dict:
    """A KawaiiIpSec (create) or KawaiiIpSecUpdate (partial) body, checked and defaulted."""
    if not isinstance(payload, dict):
        raise Invalid("request body must be a JSON object")
    return check_object(IPSEC_FIELDS, payload, "", partial=partial)


CEPH_PORTS = "111,2049,3300,6789,6800-7568"


def peering_with_ceph(peering: dict) -> dict:
    """Upstream: a peering with a `ceph` subnet gets a tcp rule for Ceph and NFS, first, both ways."""
    rule = {"protocol": "tcp", "ports": CEPH_PORTS}
    return {**peering, "ingress": [rule] + list(peering.get("ingress") or []),
            "egress": [rule] + list(peering.get("egress") or [])}
