"""Networks: virtual networks (region child), their subnets (vnet child) and network adapters
(subnet child), validated as networks.

Upstream schema v2: collections `vnet` (`vlan_id`, `interface`, `private`,
`defaults.subnet_id`), `subnet` (`cidr`, `gateway`, `dns`, `routes`, `reserved_ranges`,
`gw_pool`, `application`, `project_id` once a project owns it) and `adapter` (`mac`,
`addresses`, `reserved`).

Rules (IPv4, as upstream's API says):
- A subnet's CIDR is a network (no host bits); it is private (RFC 1918) in a private vnet and
  public in a public one; the gateway is a host address inside it; reserved and gateway-pool
  ranges lie inside it, each first <= last, none overlapping another; the gateway pool is at least
  as large as the region has zones; no two subnets of a region overlap (409).
- A VLAN id is 0-4094: 4095 is reserved by 802.1Q and the 0.58 client's model refuses it, so a
  stored 4095 would make every read of the vnet fail in the client.
- An adapter's addresses lie in its subnet, are never its network or broadcast address, and no
  two adapters of a subnet share one (409). `assignIP=true` with no address given assigns the
  lowest free one: not the network, broadcast or gateway address, not in a reserved or gateway
  pool range, not used; none left is 507. Adapter writes run one at a time
  (`serialize_writes`), so concurrent creates never get the same address.
- MAC addresses: generated when not given, unique, in the locally administered unicast prefix
  da:1e:70 (upstream's); validated and normalised (lower case, colons) when given. Two adapters
  may share one only if both are `reserved` (a router's MAC reused across subnets); else 409.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from typing import Any, Iterable

from kahuna.resources.errors import ConflictError, InsufficientResources, Invalid
from kahuna.resources.kind import Access, Hooks, Kind, Parent, base_fields, register
from kahuna.resources.storage import CATALOGUE
from kahuna.resources.types import IP, Bool, Enum, Field, Int, ListOf, Obj, Str

Doc = dict[str, Any]
V4 = ipaddress.IPv4Address
RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MAC_PREFIX = (0xDA, 0x1E, 0x70)
_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


def _cidr(value: str, path: str) -> str:
    if "/" not in value:
        raise Invalid(f"{path}: {value!r} is not an IPv4 network in CIDR notation (like 10.0.0.0/24)")
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ipaddress.NetmaskValueError:
        raise Invalid(f"{path}: {value!r} has an invalid netmask") from None
    except ValueError as exc:
        if "host bits" in str(exc):
            raise Invalid(f"{path}: {value!r} has host bits set (the network is "
                          f"{ipaddress.IPv4Network(value, strict=False)})") from None
        raise Invalid(f"{path}: {value!r} is not an IPv4 network in CIDR notation") from None
    return str(net)


def _routes(value: list[str], path: str) -> list[str]:
    return [_cidr(route, f"{path}[{i}]") for i, route in enumerate(value)]


def _ifname(value: str, path: str) -> str:
    if not _IFNAME.match(value):
        raise Invalid(f"{path}: {value!r} is not a network interface name")
    return value


def normalize_mac(value: str, path: str = "mac") -> str:
    """'' (generate one) or a unicast MAC-48 in lower case with colons."""
    if value == "":
        return value
    mac = value.strip().lower()
    if not _MAC.match(mac):
        raise Invalid(f"{path}: {value!r} is not a MAC address (like 52:54:00:12:34:56)")
    mac = mac.replace("-", ":")
    first = int(mac[:2], 16)
    if first & 1:
        raise Invalid(f"{path}: {value!r} is a multicast address")
    if mac == "00:00:00:00:00:00":
        raise Invalid(f"{path}: {value!r} is not a usable address")
    return mac


# ------------------------------------------------------------------------------------------ vnet

VNET = register(Kind(
    name="vnet",
    label="virtual network",
    fields=base_fields() + (
        Field("vlan", Int(low=0, high=4094), default=0, db="vlan_id"),
        Field("interface", Str(min_len=1, max_len=15), required=True, validate=_ifname),
        Field("private", Bool(), default=True, create_only=True),
    ),
    parent=Parent("region", "region_id"),
    access=CATALOGUE,
))


# ---------------------------------------------------------------------------------------- subnet

RANGE = Obj(fields=(Field("first", IP(), required=True), Field("last", IP(), required=True)))


def _network(doc: Doc) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(doc["cidr"], strict=False)


def _host_range(net: ipaddress.IPv4Network) -> tuple[int, int]:
    """First and last assignable host addresses (as ints) of a network."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.prefixlen >= 31:  # RFC 3021 point-to-point and single hosts: no network/broadcast
        return first, last
    return first + 1, last - 1


def _ranges(doc: Doc, net: ipaddress.IPv4Network, key: str, label: str) -> list[tuple[int, int]]:
    out = []
    for i, r in enumerate(doc.get(key) or []):
        where = f"{label}[{i}]"
        try:
            first, last = V4(r["first"]), V4(r["last"])
        except ValueError:
            raise Invalid(f"{where}: IPv4 addresses expected") from None
        if first not in net or last not in net:
            raise Invalid(f"{where}: {first}-{last} is not inside {net}")
        if int(first) > int(last):
            raise Invalid(f"{where}: first address {first} is after last address {last}")
        out.append((int(first), int(last)))
    return out


async def _check_subnet(res, doc: Doc) -> None:
    net = _network(doc)
    vnet = await res.get(VNET, doc["vnet_id"])
    private = any(net.subnet_of(r) for r in RFC1918)
    if vnet.get("private", True) and not private:
        raise Invalid(f"cidr: {net} is not a private (RFC 1918) network, and virtual network "
                      f"{vnet.get('name')} is private")
    if not vnet.get("private", True) and any(net.overlaps(r) for r in RFC1918):
        raise Invalid(f"cidr: {net} is a private network, and virtual network {vnet.get('name')} is public")

    low, high = _host_range(net)
    try:
        gateway = V4(doc["gateway"])
    except ValueError:
        raise Invalid(f"gateway: {doc['gateway']} is not an IPv4 address") from None
    if gateway not in net:
        raise Invalid(f"gateway: {gateway} is outside {net}")
    if not low <= int(gateway) <= high:
        raise Invalid(f"gateway: {gateway} is the network or broadcast address of {net}")
    if not doc.get("dns"):
        doc["dns"] = str(gateway)

    reserved = _ranges(doc, net, "reserved_ranges", "reserved")
    pool = _ranges(doc, net, "gw_pool", "gw_pool")
    spans = sorted([(f, l, "reserved") for f, l in reserved] + [(f, l, "gw_pool") for f, l in pool])
    for (f1, l1, k1), (f2, l2, k2) in zip(spans, spans[1:]):
        if f2 <= l1:
            raise Invalid(f"{k2}: range {V4(f2)}-{V4(l2)} overlaps {k1} range {V4(f1)}-{V4(l1)}")
    if pool:
        zones = await res.count("zone", region_id=vnet["region_id"])
        size = sum(l - f + 1 for f, l in pool)
        if size < zones:
            raise Invalid(f"gw_pool: {size} address(es) for {zones} zones in the region "
                          f"(one per zone at least)")

    for vnet_doc in await res.list(VNET, vnet["region_id"]):
        for other in await res.list(SUBNET, vnet_doc["_id"]):
            if other["_id"] != doc["_id"] and _network(other).overlaps(net):
                raise ConflictError(f"cidr: {net} overlaps subnet {other.get('name')} ({other['cidr']}) "
                                    f"of virtual network {vnet_doc.get('name')}")


async def _subnet_before_create(res, doc: Doc, **_: Any) -> None:
    await _check_subnet(res, doc)


async def _subnet_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await _check_subnet(res, new)


async def _subnet_before_delete(res, doc: Doc, **_: Any) -> None:
    if doc.get("project_id"):
        raise ConflictError(f"subnet {doc.get('name')} is the private subnet of project {doc['project_id']}")


SUBNET = register(Kind(
    name="subnet",
    label="subnet",
    fields=base_fields() + (
        Field("cidr", Str(min_len=9, max_len=18), required=True, create_only=True, validate=_cidr),
        Field("gateway", IP(), required=True),
        Field("dns", IP(), default=""),
        Field("extra_routes", ListOf(item=Str(max_len=18), max_items=256), default=list, db="routes",
              validate=_routes),
        Field("reserved", ListOf(item=RANGE, max_items=256), default=list, db="reserved_ranges"),
        Field("gw_pool", ListOf(item=RANGE, max_items=256), default=list),
        Field("application", Enum(choices=("ceph", "user")), default="user"),
    ),
    parent=Parent("vnet", "vnet_id"),
    access=CATALOGUE,
    default_in="defaults.subnet_id",
    serialize_writes=True,  # no two subnets of a region overlap, whichever vnets they are in
    indexed=("project_id",),
    hooks=Hooks(before_create=_subnet_before_create, before_update=_subnet_before_update,
                before_delete=_subnet_before_delete),
))


# --------------------------------------------------------------------------------------- adapter

def _query_bool(query: Any, name: str) -> bool:
    raw = query.get(name) if query is not None else None
    if raw is None or raw == "":
        return False
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "1"):
        return True
    if str(raw).lower() in ("false", "0"):
        return False
    raise Invalid(f"{name}: expected true or false, got {raw!r}")


def free_address(subnet: Doc, used: Iterable[str]) -> str | None:
    """The lowest assignable address of the subnet, or None when there is none left."""
    net = _network(subnet)
    low, high = _host_range(net)
    taken = {int(V4(a)) for a in used if _is_v4(a)}
    taken.add(int(V4(subnet["gateway"])))
    skip = sorted(_ranges(subnet, net, "reserved_ranges", "reserved") + _ranges(subnet, net, "gw_pool", "gw_pool"))
    candidate, i = low, 0
    while candidate <= high:
        while i < len(skip) and skip[i][1] < candidate:
            i += 1
        if i < len(skip) and skip[i][0] <= candidate:
            candidate = skip[i][1] + 1
            continue
        if candidate not in taken:
            return str(V4(candidate))
        candidate += 1
    return None


def free_address_count(subnet: Doc, used: Iterable[str]) -> int:
    """How many addresses `free_address` could still hand out (same exclusions: network,
    broadcast, gateway, reserved and gateway-pool ranges, `used`)."""
    net = _network(subnet)
    low, high = _host_range(net)
    skip = {int(V4(subnet["gateway"]))} | {int(V4(a)) for a in used if _is_v4(a)}
    spans = _ranges(subnet, net, "reserved_ranges", "reserved") + _ranges(subnet, net, "gw_pool", "gw_pool")
    for first, last in spans:  # ranges never overlap (checked at write), addresses may sit inside
        skip = {a for a in skip if not first <= a <= last}
    excluded = sum(min(l, high) - max(f, low) + 1 for f, l in spans if min(l, high) >= max(f, low))
    return max(0, high - low + 1 - excluded - sum(1 for a in skip if low <= a <= high))


def _is_v4(address: str) -> bool:
    try:
        V4(address)
    except ValueError:
        return False
    return True


async def _used_addresses(res, subnet_id: str, except_id: str | None) -> dict[str, str]:
    """{address: adapter name} of the subnet's other adapters."""
    used = {}
    for adapter in await res.list(ADAPTER, subnet_id):
        if adapter["_id"] != except_id:
            for address in adapter.get("addresses") or ():
                used[address] = adapter.get("name", adapter["_id"])
    return used


async def _check_addresses(res, subnet: Doc, doc: Doc, used: dict[str, str]) -> None:
    net = _network(subnet)
    low, high = _host_range(net)
    seen = set()
    for i, address in enumerate(doc.get("addresses") or []):
        where = f"addresses[{i}]"
        if not _is_v4(address):
            raise Invalid(f"{where}: {address} is not an IPv4 address")
        ip = V4(address)
        if ip not in net:
            raise Invalid(f"{where}: {ip} is not part of subnet {subnet.get('name')} ({net})")
        if not low <= int(ip) <= high:
            raise Invalid(f"{where}: {ip} is the network or broadcast address of {net}")
        if address in seen:
            raise Invalid(f"{where}: {ip} is listed twice")
        seen.add(address)
        if address in used:
            raise ConflictError(f"{where}: {ip} is already assigned to adapter {used[address]}")


async def _check_mac(res, doc: Doc) -> None:
    mac = doc.get("mac") or ""
    if not mac:
        doc["mac"] = await _new_mac(res)
        return
    others = [a for a in await res.list(ADAPTER, mac=mac) if a["_id"] != doc["_id"]]
    if others and not (doc.get("reserved") and all(a.get("reserved") for a in others)):
        raise ConflictError(f"mac: {mac} is already the address of adapter {others[0].get('name')} "
                            f"(only reserved adapters may share one)")


async def _new_mac(res) -> str:
    for _ in range(64):
        mac = ":".join(f"{b:02x}" for b in (*MAC_PREFIX, *secrets.token_bytes(3)))
        if not await res.count(ADAPTER, mac=mac):
            return mac
    raise InsufficientResources("no free MAC address could be generated")


async def _adapter_before_create(res, doc: Doc, query: Any = None, **_: Any) -> None:
    assign = _query_bool(query, "assignIP")
    subnet = await res.get(SUBNET, doc["subnet_id"])
    used = await _used_addresses(res, subnet["_id"], None)
    await _check_addresses(res, subnet, doc, used)
    if assign and not doc.get("addresses"):
        address = free_address(subnet, used)
        if address is None:
            raise InsufficientResources(f"subnet {subnet.get('name')} ({subnet['cidr']}) has no free address left")
        doc["addresses"] = [address]
    await _check_mac(res, doc)


async def _adapter_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("addresses") != old.get("addresses"):
        subnet = await res.get(SUBNET, new["subnet_id"])
        await _check_addresses(res, subnet, new, await _used_addresses(res, subnet["_id"], new["_id"]))
    if new.get("mac") != old.get("mac") or new.get("reserved") != old.get("reserved"):
        if not new.get("mac"):
            new["mac"] = old.get("mac") or ""
        await _check_mac(res, new)


ADAPTER = register(Kind(
    name="adapter",
    label="network adapter",
    fields=base_fields() + (
        Field("mac", Str(max_len=17), default="", validate=normalize_mac),
        Field("addresses", ListOf(item=IP(), max_items=256), default=list),
        Field("reserved", Bool(), default=False),
    ),
    parent=Parent("subnet", "subnet_id"),
    access=Access(),  # superAdmin only: adapters are created for instances by the orchestrator
    indexed=("mac",),
    serialize_writes=True,  # MAC addresses are unique across subnets; addresses within one
    hooks=Hooks(before_create=_adapter_before_create, before_update=_adapter_before_update),
))

