"""A project's networks: its private subnet and zone gateways per region, its VRRP ids, and the
public subnet an instance or appliance takes its public address from.

Project document (keyed by ids; upstream keyed both maps by *names*, so two regions with
equally named zones collided and a renamed region lost its subnet):
- `private_subnets {region_id: subnet_id}`; the subnet carries `project_id`;
- `zone_gateways {zone_id: ip}`: the subnet's `gw_pool` ranges expanded in order, one address per
  zone of the region, zones sorted by name (the per-zone Kawaii VIP, every instance's gateway);
  a zone created later gets the next pool address no other zone holds when first asked for
  (`zone_gateway`, under the project's lock), 422 once the pool is used up;
- `reserved_vrrp_ids [int]`, sorted.

Choosing a private subnet (upstream's ReservePrivateSubnet, without its quirks): the region's
private virtual networks and their subnets in creation order; the first subnet with no project,
of the default application (`user`: a `ceph` storage network is never handed to a tenant), of
prefix length = the requested size, else a bigger one (size - 1 ... /17). Reservations run under
the subnet kind's write lock (the one every subnet create/update/delete holds), so two parallel
project creates never get the same subnet and an admin cannot delete a subnet being reserved.
A region failing releases every subnet reserved so far (upstream leaked them) and answers 422
naming the region and the size. A region with no private subnet of the default application at
all (no private network configured there) gives no subnet: the project is created, and compute
in that region fails with a clear 422 (`private_subnet`). A subnet without any `gw_pool` gives no
zone gateways (the pool is optional in the API; only appliances need them: `zone_gateway`
answers 422); a pool with fewer addresses than the region has zones is a 422.

VRRP ids and quota counters are written under the project's own lock (`("project", id)`, the one
a project update and a tenant create hold), so a concurrent project update never writes back a
stale list. Never call them (nor `zone_gateway` for a new zone) while holding that lock (a
tenant kind's before_create).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator.flows import register_undo
from kahuna.resources.errors import ConflictError, InsufficientResources, NotFoundError
from kahuna.resources.identity import ProjectStep, add_project_step
from kahuna.resources.network import free_address_count
from kahuna.resources.semantic import Unprocessable

log = get_logger("kahuna.project_net")

Doc = dict[str, Any]
DEFAULT_APPLICATION = "user"
BIGGEST_PREFIX = 17  # upstream's fallback stops before /16
VRRP_IDS = range(1, 256)
# what lives in a project's region (kinds not declared yet are counted by collection: 0 if absent)
REGIONAL = ("instance", "volume", "kompute", "kawaii", "konvey", "kylo")
LEFTOVERS = (("instance", "instance"), ("volume", "volume"), ("kompute", "Kompute"), ("kawaii", "Kawaii"),
             ("konvey", "Konvey"), ("kylo", "Kylo"), ("dns_record", "DNS record"))


# -- pure parts ---------------------------------------------------------------------------------

def prefix_sizes(size: int) -> list[int]:
    """The prefix lengths tried for a requested size: itself, then bigger subnets down to /17."""
    return list(range(size, min(size, BIGGEST_PREFIX) - 1, -1))


def eligible(vnet: Doc, subnet: Doc) -> bool:
    """A subnet a project may own at all (owned or not)."""
    return bool(vnet.get("private", True)) and (subnet.get("application") or DEFAULT_APPLICATION) == DEFAULT_APPLICATION


def choose_subnet(candidates: Iterable[tuple[Doc, Doc]], size: int, is_free=lambda s: not s.get("project_id")
                  ) -> Doc | None:
    """The first free eligible subnet of the smallest fitting prefix, walking (vnet, subnet)
    pairs in their given order for each prefix length in turn."""
    pairs = [(v, s) for v, s in candidates if eligible(v, s)]
    for prefix in prefix_sizes(size):
        for _, subnet in pairs:
            if ipaddress.IPv4Network(subnet["cidr"], strict=False).prefixlen == prefix and is_free(subnet):
                return subnet
    return None


def pool_addresses(subnet: Doc) -> list[str]:
    """Every address of the subnet's gateway-pool ranges, in range order."""
    out = []
    for r in subnet.get("gw_pool") or ():
        first, last = int(ipaddress.IPv4Address(r["first"])), int(ipaddress.IPv4Address(r["last"]))
        out.extend(str(ipaddress.IPv4Address(a)) for a in range(first, last + 1))
    return out


def assign_gateways(zones: list[Doc], addresses: list[str]) -> dict[str, str] | None:
    """{zone_id: ip}, zones sorted by name (then id); None when there are fewer addresses."""
    ordered = sorted(zones, key=lambda z: (z.get("name") or "", z["_id"]))
    if len(addresses) < len(ordered):
        return None
    return {zone["_id"]: ip for zone, ip in zip(ordered, addresses)}


def lowest_free_vrrp(reserved: Iterable[int]) -> int | None:
    taken = set(reserved)
    return next((i for i in VRRP_IDS if i not in taken), None)


# -- lookups for compute and appliances --------------------------------------------------------

def _label(doc: Doc) -> str:
    return doc.get("name") or doc.get("_id", "")


async def _region_label(res, region_id: str) -> str:
    try:
        return _label(await res.get("region", region_id))
    except NotFoundError:
        return region_id


async def private_subnet(res, project: Doc, region_id: str) -> Doc:
    """The project's private subnet in the region (also found under an upstream name key)."""
    subnets = project.get("private_subnets") or {}
    subnet_id = subnets.get(region_id) if isinstance(subnets, dict) else None
    if not subnet_id and isinstance(subnets, dict):
        subnet_id = subnets.get(await _region_label(res, region_id))
    if subnet_id:
        try:
            return await res.get("subnet", subnet_id)
        except NotFoundError:
            pass
    raise Unprocessable(f"project {_label(project)} has no private subnet in region "
                        f"{await _region_label(res, region_id)} (the region has no private network for projects)")


async def zone_gateway(res, project: Doc, zone_id: str) -> str:
    """The project's gateway address in the zone (from its private subnet's gw_pool)."""
    gateways = project.get("zone_gateways") or {}
    ip = gateways.get(zone_id) if isinstance(gateways, dict) else None
    if ip:
        return ip
    try:
        zone = await res.get("zone", zone_id)
    except NotFoundError:
        zone = {"_id": zone_id, "name": zone_id}
    if isinstance(gateways, dict) and gateways.get(zone.get("name")):
        return gateways[zone["name"]]  # an upstream document, keyed by zone name
    if isinstance(gateways, dict) and (project.get("private_subnets") or {}).get(zone.get("region_id")):
        ip = await _assign_late_zone(res, project["_id"], zone)
        if ip:
            return ip
    raise Unprocessable(f"project {_label(project)} has no gateway address in zone {_label(zone)} "
                        f"(its private subnet there has no gw_pool address for this zone)")


async def _assign_late_zone(res, project_id: str, zone: Doc) -> str:
    """A zone created after the project: the next gw_pool address no other zone of the project
    holds, now recorded (under the project's lock, so two first Komputes in the new zone agree);
    "" when the pool is used up or the project has no subnet in that region."""
    async with _project_lock(res, project_id):
        project = await res.get("project", project_id)
        gateways = dict(project.get("zone_gateways") or {})
        if gateways.get(zone["_id"]):
            return gateways[zone["_id"]]
        subnet_id = (project.get("private_subnets") or {}).get(zone["region_id"])
        if not subnet_id:
            return ""
        try:
            subnet = await res.get("subnet", subnet_id)
        except NotFoundError:
            return ""
        taken = set(gateways.values())
        ip = next((a for a in pool_addresses(subnet) if a not in taken), "")
        if ip:
            gateways[zone["_id"]] = ip
            await res.set_fields("project", project_id, {"zone_gateways": gateways})
            log.info("zone gateway assigned", project=project_id, zone=zone["_id"], ip=ip)
        return ip


async def public_subnet(res, region_id: str, needed: int = 1) -> Doc:
    """A public subnet of the region with at least `needed` free addresses: the public virtual
    networks in creation order, each one's default subnet first. 422 when the region has no
    public network, 507 when none has room."""
    region = await res.get("region", region_id)
    vnets = [v for v in await res.list("vnet", region_id) if not v.get("private", True)]
    if not vnets:
        raise Unprocessable(f"region {_label(region)} has no public virtual network")
    for vnet in vnets:
        default = (vnet.get("defaults") or {}).get("subnet_id")
        subnets = sorted(await res.list("subnet", vnet["_id"]), key=lambda s: s["_id"] != default)
        for subnet in subnets:
            if (subnet.get("application") or DEFAULT_APPLICATION) != DEFAULT_APPLICATION:
                continue
            used = [a for adapter in await res.list("adapter", subnet["_id"]) for a in adapter.get("addresses") or ()]
            if free_address_count(subnet, used) >= needed:
                return subnet
    raise InsufficientResources(f"no public subnet of region {_label(region)} has {needed} free "
                                f"address{'' if needed == 1 else 'es'}")


# -- VRRP ids -----------------------------------------------------------------------------------

def _project_lock(res, project_id: str):
    return res.locks.hold(("project", project_id))


async def allocate_vrrp_id(res, project_id: str) -> int:
    """The lowest VRRP id (1..255) the project does not use yet, now reserved; 507 when none."""
    async with _project_lock(res, project_id):
        project = await res.get("project", project_id)
        reserved = [int(i) for i in project.get("reserved_vrrp_ids") or ()]
        vrid = lowest_free_vrrp(reserved)
        if vrid is None:
            raise InsufficientResources(f"project {_label(project)} uses all {len(VRRP_IDS)} VRRP ids")
        await res.set_fields("project", project_id, {"reserved_vrrp_ids": sorted(reserved + [vrid])})
    log.info("vrrp id reserved", project=project_id, vrrp_id=vrid)
    return vrid


async def release_vrrp_id(res, project_id: str, vrrp_id: int) -> None:
    """Give a VRRP id back (idempotent; a project already gone has nothing to give back)."""
    async with _project_lock(res, project_id):
        try:
            project = await res.get("project", project_id)
        except NotFoundError:
            return
        reserved = [int(i) for i in project.get("reserved_vrrp_ids") or ()]
        if int(vrrp_id) in reserved:
            await res.set_fields("project", project_id,
                                 {"reserved_vrrp_ids": sorted(i for i in reserved if i != int(vrrp_id))})


async def _undo_vrrp(res, data: Doc) -> None:
    await release_vrrp_id(res, data["project_id"], int(data["vrrp_id"]))


register_undo("project.vrrp", _undo_vrrp)


# -- reservation --------------------------------------------------------------------------------

async def _candidates(res, region_id: str) -> list[tuple[Doc, Doc]]:
    out = []
    for vnet in await res.list("vnet", region_id):
        for subnet in await res.list("subnet", vnet["_id"]):
            out.append((vnet, subnet))
    return out


async def _stale(res, pairs: list[tuple[Doc, Doc]]) -> set[str]:
    """Subnets still marked by a project that no longer exists (a crash between the project's
    delete and the release): free again. One query for all the owners."""
    owners = {s["project_id"] for v, s in pairs if s.get("project_id") and eligible(v, s)}
    if not owners:
        return set()
    alive = {p["_id"] for p in await res.store.find("project", {"_id": {"$in": sorted(owners)}})}
    return {s["_id"] for _, s in pairs if s.get("project_id") and s["project_id"] not in alive}


async def _reserve_region(res, project: Doc, region_id: str, size: int) -> tuple[str, dict[str, str]] | None:
    """Reserve the region's subnet for the project (caller holds the subnet write lock); answers
    (subnet id, zone gateways), or None when the region has no private subnet for projects."""
    pairs = await _candidates(res, region_id)
    if not any(eligible(v, s) for v, s in pairs):
        return None
    stale = await _stale(res, pairs)
    subnet = choose_subnet(pairs, size, lambda s: not s.get("project_id") or s["_id"] in stale)
    region = await _region_label(res, region_id)
    if subnet is None:
        tried = prefix_sizes(size)
        sizes = f"/{tried[0]}" + (f" (nor a bigger one down to /{tried[-1]})" if len(tried) > 1 else "")
        raise Unprocessable(f"regions: region {region} has no free private {sizes} subnet for project "
                            f"{_label(project)}")
    gateways: dict[str, str] = {}
    addresses = pool_addresses(subnet)
    if addresses:
        zones = await res.list("zone", region_id)
        assigned = assign_gateways(zones, addresses)
        if assigned is None:
            raise Unprocessable(f"regions: subnet {_label(subnet)} ({subnet['cidr']}) of region {region} has "
                                f"{len(addresses)} gw_pool address(es) for {len(zones)} zones")
        gateways = assigned
    await res.set_fields("subnet", subnet["_id"], {"project_id": project["_id"]})
    log.info("private subnet reserved", project=project["_id"], region=region_id, subnet=subnet["_id"],
             cidr=subnet["cidr"])
    return subnet["_id"], gateways


async def _free_subnets(res, project_id: str, subnet_ids: Iterable[str]) -> None:
    """Clear `project_id` on those subnets if this project still owns them (caller holds the lock)."""
    for subnet_id in subnet_ids:
        try:
            subnet = await res.get("subnet", subnet_id)
        except NotFoundError:
            continue
        if subnet.get("project_id") == project_id:
            await res.set_fields("subnet", subnet_id, {"project_id": ""})
            log.info("private subnet released", project=project_id, subnet=subnet_id)


async def _free_shielded(res, project_id: str, subnet_ids: Iterable[str]) -> None:
    """The undo of a reservation that failed or was cancelled half-way: runs to its end."""
    with trio.CancelScope(shield=True):
        await _free_subnets(res, project_id, list(subnet_ids))


async def _reserve_regions(res, project: Doc, region_ids: Iterable[str], size: int
                           ) -> tuple[dict[str, str], dict[str, str]]:
    """Reserve every region's subnet, all or nothing (caller holds the subnet write lock)."""
    subnets: dict[str, str] = {}
    gateways: dict[str, str] = {}
    try:
        for region_id in region_ids:
            got = await _reserve_region(res, project, region_id, size)
            if got is not None:
                subnets[region_id], zone_gws = got
                gateways.update(zone_gws)
    except BaseException:
        await _free_shielded(res, project["_id"], subnets.values())
        raise
    return subnets, gateways


async def _create_step(res, project: Doc, subnet_size: int, **_: Any) -> None:
    async with res.kind_lock("subnet"):
        subnets, gateways = await _reserve_regions(res, project, project.get("region_ids") or (), subnet_size)
        try:
            await res.set_fields("project", project["_id"], {"private_subnets": subnets, "zone_gateways": gateways})
        except BaseException:
            await _free_shielded(res, project["_id"], subnets.values())
            raise
    project["private_subnets"], project["zone_gateways"] = subnets, gateways


async def _release_step(res, project: Doc) -> None:
    """The project goes (or its create failed): every subnet it owns is free again."""
    async with res.kind_lock("subnet"):
        owned = {s["_id"] for s in await res.list("subnet", project_id=project["_id"])}
        await _free_subnets(res, project["_id"], sorted(owned))


async def _regional_leftovers(res, project_id: str, region_id: str) -> list[str]:
    zones = {z["_id"] for z in await res.list("zone", region_id)}
    left = []
    for collection in REGIONAL:
        docs = await res.store.find(collection, {"project_id": project_id})
        n = sum(1 for d in docs if d.get("region_id") == region_id or d.get("zone_id") in zones)
        if n:
            left.append(_count_of(n, dict(LEFTOVERS)[collection]))
    return left


async def project_leftovers(res, project_id: str) -> list[str]:
    """What the project still has, by kind ("2 volumes", "1 DNS record"), kinds not declared
    (yet) counted through their collection."""
    left = []
    for collection, label in LEFTOVERS:
        n = await res.store.count(collection, {"project_id": project_id})
        if n:
            left.append(_count_of(n, label))
    return left


async def _delete_guard(res, project: Doc) -> None:
    left = await project_leftovers(res, project["_id"])
    if left:
        raise ConflictError(f"project {_label(project)} still has {', '.join(left)}")


async def _update_step(res, old: Doc, new: Doc, subnet_size: int, **_: Any) -> None:
    """Regions added reserve their subnet and gateways (at the size of the project's existing
    subnets, else `subnet_size`); regions removed give them back, refused (409) while the
    project has anything there. Runs after the update is stored: raising restores the old
    document, and whatever this step reserved is released first."""
    before, after = list(old.get("region_ids") or ()), list(new.get("region_ids") or ())
    added = [r for r in after if r not in before]
    removed = [r for r in before if r not in after]
    if not added and not removed:
        return
    for region_id in removed:
        left = await _regional_leftovers(res, new["_id"], region_id)
        if left:
            raise ConflictError(f"regions: project {_label(new)} still has {', '.join(left)} in region "
                                f"{await _region_label(res, region_id)}")
    subnets = dict(old.get("private_subnets") or {})
    gateways = dict(old.get("zone_gateways") or {})
    async with res.kind_lock("subnet"):
        size = await _existing_size(res, subnets.values()) or subnet_size
        got, got_gws = await _reserve_regions(res, new, added, size)
        for region_id in removed:
            subnets.pop(region_id, None)
            zones = {z["_id"] for z in await res.list("zone", region_id)}
            gateways = {z: ip for z, ip in gateways.items() if z not in zones}
        subnets.update(got)
        gateways.update(got_gws)
        try:
            await res.set_fields("project", new["_id"], {"private_subnets": subnets, "zone_gateways": gateways})
        except BaseException:
            await _free_shielded(res, new["_id"], got.values())
            raise
        released = [old["private_subnets"][r] for r in removed if r in (old.get("private_subnets") or {})]
        await _free_subnets(res, new["_id"], released)
    new["private_subnets"], new["zone_gateways"] = subnets, gateways


async def _existing_size(res, subnet_ids: Iterable[str]) -> int | None:
    for subnet_id in subnet_ids:
        try:
            return ipaddress.IPv4Network((await res.get("subnet", subnet_id))["cidr"], strict=False).prefixlen
        except NotFoundError:
            continue
    return None


def _count_of(n: int, label: str) -> str:
    return f"{n} {label}{'' if n == 1 else 's'}"


add_project_step(ProjectStep("private_subnets", _create_step, _release_step,
                             update=_update_step, delete_guard=_delete_guard))
