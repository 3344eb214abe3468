"""Kawaii gateways and Konvey load balancers: their appliance Komputes, VIPs and VRRP ids, as
durable flows (kahuna.orchestrator.flows).

Kawaii create (upstream §6.1 "MZR", without its leaks), each step recorded with its undo:
  the document; the project's private subnet and zone gateways of the region; a public subnet of
  the region with one free address per zone (kahuna.resources.project_net); per zone (by name) a
  public VIP adapter `<kawaii>-<zone>-VIP-public-adapter-0` (undo `adapter.delete`) and a VRRP id
  from the project's range (undo `project.vrrp`), shared by the zone's public VIP and its gateway
  VIP; the VIPs on the document (so the appliances' metadata has them from their first boot); then
  per zone a Kontroller agent (undo `kontroller.agent`) and an appliance Kompute `<kawaii>-<zone>-1`
  (1 vCPU, 1 GiB, 16 GiB, profile `kawaii`, undo `kompute.delete`). Any failure undoes all of it:
  no VIP adapter, address, VRRP id, Kompute, volume or agent is left (upstream leaks the VIPs and
  VRRP ids).
Konvey create (upstream §6.3 "HAR"): the private VIP adapter on the project's subnet and its VRRP
  id, then one appliance (two when `failover`: on two hosts, in two zones when the region has
  more than one zone with room), profile `konvey`, each with its agent. Zone level works (upstream's
  zone route always answered 409).
Deletes release everything in the reverse order; each step is idempotent, so a delete refused
half-way (an agent away) can be retried.

The document shapes (what kahuna.metadata reads) are in /tmp/team/interfaces.md and the kinds'
modules (kahuna.resources.kawaii, kahuna.resources.konvey).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

from kahuna.logs import get_logger
from kahuna.orchestrator import komputes, kontroller
from kahuna.orchestrator.adapters import create_adapter, delete_adapter
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.orchestrator.placement import NoEligibleHost
from kahuna.resources import project_net
from kahuna.resources.errors import NotFoundError
from kahuna.resources.semantic import Unprocessable

log = get_logger("kahuna.appliances")

Doc = dict[str, Any]
GiB = 1 << 30
VCPUS, MEMORY, DISK = 1, GiB, 16 * GiB  # upstream's appliance size
PUBLIC_IF, PRIVATE_IF = "ens3", "ens4"
PRIORITY = 100  # kahuna.metadata raises the appliance's own zone to 150
UNDO_KOMPUTE = "appliance.kompute"
_NOT_HOST = re.compile(r"[^a-z0-9-]+")


def host_name(*parts: str) -> str:
    """An instance (and agent) name that is a valid host name: lower case, `-` for anything
    else, at most 63 characters (the names of projects and zones may hold spaces or dots); the
    last part (the appliance's number) is never cut off."""
    clean = [re.sub(r"-{2,}", "-", _NOT_HOST.sub("-", p.lower())).strip("-") for p in parts if p]
    clean = [c for c in clean if c] or ["appliance"]
    last, head = clean[-1][:40], "-".join(clean[:-1])
    if len(head) + 1 + len(last) > 63:  # shortened, with a digest of the whole so names stay apart
        digest = hashlib.sha256(head.encode()).hexdigest()[:8]
        head = f"{head[:62 - len(last) - 9].strip('-')}-{digest}"
    return f"{head}-{last}" if head else last


def _prefix(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).prefixlen


def _first_address(adapter: Doc, what: str) -> str:
    addresses = adapter.get("addresses") or []
    if not addresses:
        raise Unprocessable(f"{what}: the VIP adapter got no address")
    return addresses[0]


def _appliance_spec(doc: Doc, *, profile: str, name: str, zone_id: str, exclude=frozenset(),
                    peering_subnet_ids=()):
    return komputes.KomputeSpec(project_id=doc["project_id"], region_id=doc["region_id"], zone_id=zone_id,
                                name=name, vcpus=VCPUS, memory=MEMORY, disk=DISK, public=False,
                                description=f"{profile} appliance of {doc['name']}", profile=profile,
                                profile_id=doc["_id"], exclude_kaktus_ids=frozenset(exclude),
                                peering_subnet_ids=tuple(peering_subnet_ids))


async def _appliance(res, flow: Flow, spec) -> Doc:
    """One appliance: its Kontroller agent, then its Kompute (whose ISO carries the agent's key);
    both recorded on `flow`. Answers the `appliances[]` entry."""
    agent = await kontroller.create_agent(res, flow, spec.name, spec.profile_id)
    await flow.record(f"kompute {spec.name}", undo=UNDO_KOMPUTE, data={
        "kompute_id": "", "project_id": spec.project_id, "name": spec.name, "profile_id": spec.profile_id})
    try:
        kompute = await komputes.create_kompute(res, spec)
    except BaseException:
        await flow.remember(name="")  # the Kompute's own flow undid it: nothing to look for
        raise
    await flow.remember(kompute_id=kompute["_id"])
    instance = await res.get("instance", kompute["instance_id"]) if kompute.get("instance_id") else {}
    return {"zone_id": instance.get("zone_id") or kompute.get("zone_id") or spec.zone_id,
            "kaktus_id": instance.get("kaktus_id", ""), "kompute_id": kompute["_id"],
            "instance_id": kompute.get("instance_id", ""), "agent_id": agent["_id"], "name": spec.name}


async def _create(res, kind: str, doc: Doc, build) -> None:
    """`build(res, flow, doc)` as one durable flow whose first step is the document itself."""
    flow = await Flow(res, f"{kind}.create", doc["_id"]).start()
    try:
        await flow.record("document", undo="store.delete", data={"collection": kind, "id": doc["_id"]})
        await build(res, flow, doc)
    except BaseException:
        await flow.rollback()
        raise
    await flow.finish()
    log.info(f"{kind} created", id=doc["_id"], appliances=len(doc.get("appliances") or ()))


async def _vrrp_id(res, flow: Flow, project_id: str, what: str) -> int:
    vrrp_id = await project_net.allocate_vrrp_id(res, project_id)
    await flow.record(f"vrrp {what}", undo="project.vrrp", data={"project_id": project_id, "vrrp_id": vrrp_id})
    return vrrp_id


def agent_ids(doc: Doc) -> list[str]:
    return [a.get("agent_id", "") for a in doc.get("appliances") or [] if a.get("agent_id")]


# ---------------------------------------------------------------------------------------- Kawaii


async def zones_of(res, region_id: str) -> list[Doc]:
    return sorted(await res.list("zone", region_id), key=lambda z: (z.get("name", ""), z["_id"]))


async def create_kawaii(res, kawaii: Doc) -> None:
    await _create(res, "kawaii", kawaii, _build_kawaii)


async def _build_kawaii(res, flow: Flow, kawaii: Doc) -> None:
    project = await res.get("project", kawaii["project_id"])
    region = await res.get("region", kawaii["region_id"])
    zones = await zones_of(res, region["_id"])
    if not zones:
        raise Unprocessable(f"region {region.get('name')} has no zone: a Kawaii has one appliance per zone")
    private = await project_net.private_subnet(res, project, region["_id"])
    gateways = {z["_id"]: await project_net.zone_gateway(res, project, z["_id"]) for z in zones}
    public = await project_net.public_subnet(res, region["_id"], needed=len(zones))
    public_mask, private_mask = _prefix(public["cidr"]), _prefix(private["cidr"])
    adapters, vrrp_ids, vips, netzones = {}, {}, [], []
    for zone in zones:
        adapter = await create_adapter(res, flow, subnet_id=public["_id"],
                                       name=f"{kawaii['name']}-{zone['name']}-VIP-public-adapter-0",
                                       project_id=project["_id"], assign_ip=True)
        address = _first_address(adapter, f"zone {zone['name']}")
        vrrp_id = await _vrrp_id(res, flow, project["_id"], zone["name"])
        adapters[zone["_id"]], vrrp_ids[zone["_id"]] = adapter["_id"], vrrp_id
        vips.append({"zone_id": zone["_id"], "vrrp_id": vrrp_id, "interface": PUBLIC_IF, "vip": address,
                     "priority": PRIORITY, "mask": public_mask, "public": True})
        vips.append({"zone_id": zone["_id"], "vrrp_id": vrrp_id, "interface": PRIVATE_IF,
                     "vip": gateways[zone["_id"]], "priority": PRIORITY, "mask": private_mask, "public": False})
        netzones.append({"zone": zone["name"], "public": address, "private": gateways[zone["_id"]]})
    publics = sorted(z["public"] for z in netzones)
    fields = {"public_subnet_id": public["_id"], "private_subnet_id": private["_id"],
              "public_adapter_ids": adapters, "public_vips": publics, "vrrp_ids": vrrp_ids,
              "virtual_ips": vips,
              "netip": {"public": publics, "private": sorted(z["private"] for z in netzones), "zones": netzones}}
    kawaii.update(await res.set_fields("kawaii", kawaii["_id"], fields))
    peerings = [p["subnet"] for p in kawaii.get("vpc_peerings") or ()]
    appliances = []
    for zone in zones:
        spec = _appliance_spec(kawaii, profile="kawaii", name=host_name(kawaii["name"], zone["name"], "1"),
                               zone_id=zone["_id"], peering_subnet_ids=peerings)
        appliances.append(await _appliance(res, flow, spec))
        kawaii.update(await res.set_fields("kawaii", kawaii["_id"], {
            "appliances": appliances, "kompute_ids": [a["kompute_id"] for a in appliances]}))
    if peerings:
        kawaii.update(await res.set_fields("kawaii", kawaii["_id"], {
            "vpc_peerings": await _peering_netips(res, kawaii, zones)}))


async def _peering_netips(res, kawaii: Doc, zones: list[Doc]) -> list[Doc]:
    """Each peering's `netip`: per zone, the appliance's address in the peered subnet."""
    names = {z["_id"]: z.get("name", "") for z in zones}
    by_subnet: dict[str, list[Doc]] = {}
    for appliance in kawaii.get("appliances") or ():
        try:
            instance = await res.get("instance", appliance["instance_id"])
        except NotFoundError:
            continue
        for adapter_id in instance.get("adapter_ids") or ():
            try:
                adapter = await res.get("adapter", adapter_id)
            except NotFoundError:
                continue
            if adapter.get("addresses"):
                by_subnet.setdefault(adapter.get("subnet_id", ""), []).append(
                    {"zone": names.get(appliance["zone_id"], ""), "private": adapter["addresses"][0], "public": ""})
    return [{**p, "netip": by_subnet.get(p["subnet"], [])} for p in kawaii.get("vpc_peerings") or ()]


async def delete_kawaii(res, kawaii: Doc) -> None:
    await _delete_appliances(res, kawaii)
    for adapter_id in (kawaii.get("public_adapter_ids") or {}).values():
        await delete_adapter(res, adapter_id)
    for vrrp_id in sorted(set((kawaii.get("vrrp_ids") or {}).values())):
        await project_net.release_vrrp_id(res, kawaii["project_id"], int(vrrp_id))
    log.info("kawaii deleted", kawaii=kawaii["_id"])


async def _delete_appliances(res, doc: Doc) -> None:
    """Komputes first (their domains go), then their agents (keys revoked, sessions closed)."""
    for appliance in doc.get("appliances") or ():
        await komputes.delete_kompute(res, appliance.get("kompute_id", ""))
        await kontroller.delete_agent(res, appliance.get("agent_id", ""))


# ---------------------------------------------------------------------------------------- Konvey


async def create_konvey(res, konvey: Doc) -> None:
    await _create(res, "konvey", konvey, _build_konvey)


async def _build_konvey(res, flow: Flow, konvey: Doc) -> None:
    project = await res.get("project", konvey["project_id"])
    region = await res.get("region", konvey["region_id"])
    private = await project_net.private_subnet(res, project, region["_id"])
    adapter = await create_adapter(res, flow, subnet_id=private["_id"],
                                   name=f"konvey-{konvey['name']}-{region['name']}-VIP-private-adapter-0",
                                   project_id=project["_id"], assign_ip=True)
    vip = _first_address(adapter, f"Konvey {konvey['name']}")
    vrrp_id = await _vrrp_id(res, flow, project["_id"], konvey["name"])
    konvey.update(await res.set_fields("konvey", konvey["_id"], {
        "subnet_id": private["_id"], "private_adapter_id": adapter["_id"], "vip": vip, "vrrp_id": vrrp_id,
        "mask": _prefix(private["cidr"])}))
    count = 2 if konvey.get("failover") else 1
    zone_id = konvey.get("zone_id") or ""
    appliances: list[Doc] = []
    for n in range(1, count + 1):
        name = host_name("konvey", project.get("name", ""), konvey["name"], str(n))
        hosts = {a["kaktus_id"] for a in appliances if a.get("kaktus_id")}
        spec = _appliance_spec(konvey, profile="konvey", name=name, zone_id=zone_id, exclude=hosts)
        if appliances and not zone_id:
            # region level: the second appliance in another zone when one has room, else on
            # another host of the same zone
            zone_hosts = {k["_id"] for z in {a["zone_id"] for a in appliances} for k in await res.list("kaktus", z)}
            other = _appliance_spec(konvey, profile="konvey", name=name, zone_id="", exclude=hosts | zone_hosts)
            try:
                appliances.append(await _appliance_with_agent_retry(res, flow, other))
                continue
            except NoEligibleHost:
                pass
        appliances.append(await _appliance_with_agent_retry(res, flow, spec))
    konvey.update(await res.set_fields("konvey", konvey["_id"], {
        "appliances": appliances, "kompute_ids": [a["kompute_id"] for a in appliances],
        "failover": len(appliances) > 1}))


async def _appliance_with_agent_retry(res, flow: Flow, spec) -> Doc:
    """`_appliance`, with the agent undone at once when the Kompute could not be placed (the
    caller may try another placement under the same name)."""
    mark = len(flow.steps)
    try:
        return await _appliance(res, flow, spec)
    except NoEligibleHost:
        for step in flow.steps[mark:]:  # their recorded undo is then a no-op
            if step.get("undo") == kontroller.UNDO:
                await kontroller.delete_agent(res, step["data"].get("agent_id", ""))
        raise


async def delete_konvey(res, konvey: Doc) -> None:
    await _delete_appliances(res, konvey)
    await delete_adapter(res, konvey.get("private_adapter_id") or "")
    if konvey.get("vrrp_id"):
        await project_net.release_vrrp_id(res, konvey["project_id"], int(konvey["vrrp_id"]))
    log.info("konvey deleted", konvey=konvey["_id"])


async def _undo_kompute(res, data: Doc) -> None:
    """Recorded before the Kompute is made: after a crash before its id was known, it is found by
    name in the project, and only if it is this appliance's (profile_id)."""
    kompute_id = data.get("kompute_id") or ""
    if not kompute_id and data.get("name"):
        kompute_id = next((k["_id"] for k in await res.list("kompute", project_id=data.get("project_id", ""),
                                                              name=data["name"])
                           if k.get("profile_id") == data.get("profile_id")), "")
    if kompute_id:
        await komputes.delete_kompute(res, kompute_id)


register_undo(UNDO_KOMPUTE, _undo_kompute)

# the controller fields of both appliance profiles' cloud-init, also for ISOs rebuilt after a restart
komputes.register_meta_extras("kawaii", kontroller.meta_extras)
komputes.register_meta_extras("konvey", kontroller.meta_extras)
