"""kMotion: move an instance (or a Kompute's instance) to another Kaktus, live or cold.

Plan (`POST …/kmotion/plan`, the 0.58 client's `KMotionPlanRequest {destination, kaktus, live}`):
`manual` names the Kaktus; `zone` elects the best host of the instance's zone; `region` and
`auto` the best of its region. Election is kahuna.orchestrator.placement's (connected agents
offering the methods the commit will call, capacity, maintenance, Kwarantine), the current host
excluded. A named Kaktus in maintenance or forbidden by a Kwarantine is a 409 saying so; one that
cannot hold the instance a 507; one without a connected agent a 503. The plan is stored
(collection `kmotion_plan`) for an hour.

Commit (`PATCH …/kmotion/commit {plan}`), under the instance's lock (no delete or second
kMotion meanwhile), the target checked again:
- live (a running domain): `GetLibvirtEndpoint` on the target, `MigrateInstance` to
  `qemu+<proto>://<address>:<port>/system` on the source (libvirt moves the running domain, the
  RBD disks are shared), then the target's persistent definition gets SPICE on its own address;
- cold (asked for, or the domain is not running): the definition read from the source, ACPI
  shutdown polled up to the grace, then destroyed (bounded), undefined on the source, defined on
  the target with SPICE on the target's address, and brought back to the power state it had
  (upstream always restarts it). Any failure puts it back on the source in that state.
Then the instance (and its Kompute) point at the target, in the target's zone, and the Kaktus
usage counters move. Every step is a durable flow step: a crash mid-way is undone at the next
start (live: the instance is pointed at whichever host holds the domain).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from typing import Any

from kahuna.logs import get_logger
from kahuna.orchestrator import placement
from kahuna.orchestrator.agent_calls import AgentCalls, NoAgent
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.orchestrator.instances import STOPPED, Host, footprint, shutdown_grace
from kahuna.orchestrator.komputes import kaktus_usage
from kahuna.orchestrator.komputes import PLACEMENT_LOCK
from kahuna.resources.errors import ConflictError, DomainError, InsufficientResources, Invalid, Missing, NotFoundError
from kahuna.resources.service import utcnow
from kahuna.store import errors as store_errors
from kahuna.store.base import delete_if_present, new_id

log = get_logger("kahuna.kmotion")

Doc = dict[str, Any]
COLLECTION = "kmotion_plan"
MODES = ("manual", "zone", "region", "auto")
PLAN_LIFETIME = timedelta(hours=1)
LIVE_METHODS = frozenset({"GetLibvirtEndpoint"})
COLD_METHODS = frozenset({"CreateInstance", "InstanceOperation", "GetInstanceState"})


# ---------------------------------------------------------------------------- plan

async def plan(res, instance: Doc, *, destination: str = "auto", kaktus_id: str = "", live: bool = True,
               kompute: Doc | None = None) -> Doc:
    if destination not in MODES:
        raise Invalid(f"destination: must be one of {', '.join(MODES)}")
    kompute = kompute or (await res.list("kompute", instance_id=instance["_id"]) or [None])[0]
    owner = kompute or instance  # a Kompute's own switch counts, whichever route asks
    if not owner.get("kmotion_enabled", True) or not instance.get("kmotion_enabled", True):
        raise Missing(f"kmotion_enabled: kMotion is disabled for {owner['name']}")
    request = await _request(res, instance, live)
    if destination == "manual":
        target = await _manual_target(res, instance, kaktus_id, request)
    else:
        region = await res.get("region", instance["region_id"])
        zones = [await res.get("zone", instance["zone_id"])] if destination == "zone" else \
            await res.list("zone", region["_id"])
        found = await candidates(res, zones, request.methods)
        scope = f"zone {zones[0].get('name')}" if destination == "zone" else f"region {region.get('name')}"
        request = dataclasses.replace(request, scope=scope)
        target = found[placement.choose_host(request, [c for _, c in found.values()]).id][0]
    now = utcnow()
    doc = {"_id": new_id(), "instance_id": instance["_id"], "project_id": instance["project_id"],
           "source_id": instance["kaktus_id"], "target_id": target["_id"], "live": bool(live),
           "created_at": now, "expires_at": now + PLAN_LIFETIME}
    await res.store.insert(COLLECTION, doc)
    log.info("kmotion planned", instance=instance["_id"], source=doc["source_id"], target=target["_id"], live=live)
    return doc


def view(doc: Doc) -> Doc:
    """The client's `KMotionPlan`."""
    return {"id": doc["_id"], "instance": doc["instance_id"], "source": doc["source_id"],
            "target": doc["target_id"], "live": bool(doc["live"])}


async def _request(res, instance: Doc, live: bool) -> placement.PlacementRequest:
    return placement.PlacementRequest(
        name=instance["name"], vcpus=int(instance["vcpus"]), memory=int(instance["memory"]),
        methods=LIVE_METHODS if live else COLD_METHODS,
        kwarantines=tuple(await member_kwarantines(res, instance)),
        exclude_hosts=frozenset({instance["kaktus_id"]}))


async def candidates(res, zones: list[Doc], methods) -> dict[str, tuple[Doc, placement.Candidate]]:
    """{kaktus id: (document, placement candidate)} for every Kaktus of `zones`."""
    calls = AgentCalls(res.extras.get("hub"))
    out = {}
    for zone in zones:
        for node in await res.list("kaktus", zone["_id"]):
            agents = node.get("agent_ids") or ()
            offered = {m for m in methods if calls.eligible(agents, m)}
            names = [i["name"] for i in await res.list("instance", kaktus_id=node["_id"])]
            out[node["_id"]] = (node, placement.candidate_from_kaktus(
                node, zone_name=zone.get("name", ""), connected=bool(offered) or not methods,
                methods=offered, instance_names=names))
    return out


async def _manual_target(res, instance: Doc, kaktus_id: str, request: placement.PlacementRequest) -> Doc:
    if not kaktus_id:
        raise Invalid("kaktus: required when destination is manual")
    try:
        target = await res.get("kaktus", kaktus_id)
        zone = await res.get("zone", target["zone_id"])
    except NotFoundError:
        raise Missing(f"kaktus: Kaktus {kaktus_id} not found") from None
    if zone.get("region_id") != instance["region_id"]:
        raise Missing(f"kaktus: Kaktus {target['name']} is not in the instance's region")
    if target["_id"] == instance["kaktus_id"]:
        raise ConflictError(f"kaktus: Kaktus {target['name']} already hosts {instance['name']}")
    await check_target(res, request, target, zone)
    return target


async def check_target(res, request: placement.PlacementRequest, target: Doc, zone: Doc) -> None:
    """The named target still fits: 409 in maintenance or excluded by a Kwarantine, 507 full,
    503 no connected agent offering the methods."""
    found = await candidates(res, [zone], request.methods)
    candidate = found[target["_id"]][1]
    why = placement.refusal(dataclasses.replace(request, exclude_hosts=frozenset()), candidate)
    if why is None:
        return
    category, text = why
    reason = f"kaktus: Kaktus {target['name']} cannot take {request.name}: {text}"
    if category == "affinity" or candidate.maintenance:
        raise ConflictError(reason)
    if category == "full":
        raise InsufficientResources(reason)
    raise NoAgent(reason)


async def member_kwarantines(res, instance: Doc) -> list[placement.Kwarantine]:
    """The groups the instance (or its Kompute) is in, with where their *other* members run."""
    kompute = (await res.list("kompute", instance_id=instance["_id"]) or [None])[0]
    group_ids = list(instance.get("kwarantine_ids") or ()) + list((kompute or {}).get("kwarantine_ids") or ())
    out = []
    for gid in dict.fromkeys(group_ids):
        try:
            group = await res.get("kwarantine", gid)
        except NotFoundError:
            continue
        if group.get("project_id") != instance["project_id"]:
            continue
        others = [i for i in group.get("instance_ids") or () if i != instance["_id"]]
        for member in group.get("kompute_ids") or ():
            if kompute is None or member != kompute["_id"]:
                try:
                    others.append((await res.get("kompute", member)).get("instance_id") or "")
                except NotFoundError:
                    pass
        hosts, zones = set(), set()
        for iid in others:
            try:
                other = await res.get("instance", iid)
            except NotFoundError:
                continue
            hosts.add(other.get("kaktus_id"))
            zones.add(other.get("zone_id"))
        out.append(placement.Kwarantine(name=group["name"], policy=group.get("policy", "host"),
                                        hosts=frozenset(hosts), zones=frozenset(zones)))
    return out


# ---------------------------------------------------------------------------- commit

async def commit(res, instance_id: str, plan_id: str) -> None:
    if not isinstance(plan_id, str) or not plan_id:
        raise Invalid("plan: required")
    async with res.locks.hold(("instance", instance_id)):
        instance = await res.get("instance", instance_id)
        try:
            doc = await res.store.get(COLLECTION, plan_id)
        except store_errors.NotFound:
            raise Missing(f"plan: kMotion plan {plan_id} not found") from None
        if doc["instance_id"] != instance["_id"]:
            raise Missing(f"plan: kMotion plan {plan_id} is for another instance")
        if _expired(doc):
            await delete_if_present(res.store, COLLECTION, plan_id)
            raise Missing(f"plan: kMotion plan {plan_id} has expired; plan again")
        if doc["source_id"] != instance["kaktus_id"]:
            await delete_if_present(res.store, COLLECTION, plan_id)
            raise ConflictError(f"plan: {instance['name']} no longer runs on the plan's source; plan again")
        source = await Host.of(res, doc["source_id"])
        state = await source.state(instance["name"])
        live = bool(doc["live"]) and state not in STOPPED
        flow = await Flow(res, "instance.kmotion", instance_id).start()
        try:
            await flow.record("move", undo="kmotion.recover", data={
                "instance_id": instance_id, "name": instance["name"], "source_id": doc["source_id"],
                "target_id": doc["target_id"], "live": live})
            async with res.locks.hold(PLACEMENT_LOCK):  # checked and reserved as one, as placement does
                target = await res.get("kaktus", doc["target_id"])
                request = await _request(res, instance, live)
                await check_target(res, request, target, await res.get("zone", target["zone_id"]))
                await _usage(res, instance, target["_id"], 1, reserved=True)
            if live:
                await _live(res, flow, instance, source, Host(res, target))
            else:
                await _cold(res, flow, instance, source, Host(res, target), state)
            await _usage(res, instance, source.doc["_id"], -1, reserved=True, released=True)
            await res.set_fields("instance", instance_id, {"kmotion": {}})
        except BaseException:
            await flow.rollback()
            raise
        await flow.finish()
        await delete_if_present(res.store, COLLECTION, plan_id)
    log.info("kmotion done", instance=instance_id, source=doc["source_id"], target=doc["target_id"], live=live)


def _expired(doc: Doc) -> bool:
    expires = doc.get("expires_at")
    if expires is None:
        return False
    if isinstance(expires, str):
        expires = datetime.fromisoformat(expires)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return expires < utcnow()


async def _usage(res, instance: Doc, kaktus_id: str, sign: int, **progress: bool) -> None:
    """Move the instance's footprint on one host, then note how far the move went on the
    instance document (`kmotion.reserved`: the target holds it; `.released`: the source let it
    go), which is what the recovery reads to put the counters right."""
    used = footprint(instance)
    await kaktus_usage(res, kaktus_id, sign * used["vcpus"], sign * used["memory"], sign)
    await res.set_fields("instance", instance["_id"], {"kmotion": progress})


async def _live(res, flow: Flow, instance: Doc, source: Host, target: Host) -> None:
    name = instance["name"]
    endpoint = await target.call("GetLibvirtEndpoint", {})
    uri = f"qemu+{endpoint.get('Protocol') or 'tcp'}://{endpoint.get('Address')}:{endpoint.get('Port') or 16509}/system"
    await source.call("MigrateInstance", {"Name": name, "DestinationURI": uri})
    await move_host(res, instance["_id"], source.doc["_id"], target.doc["_id"])
    try:  # the persistent definition on the target: SPICE on the target's own address
        xml = (await target.call("GetInstance", {"Name": name, "Migratable": True})).get("XML") or ""
        await target.call("UpdateInstance", {"Name": name, "XML": relisten(xml, endpoint.get("Address") or "")})
    except (DomainError, ValueError) as exc:
        log.warning("migrated domain keeps the source's SPICE address", instance=instance["_id"],
                    error=getattr(exc, "reason", str(exc)))


async def _cold(res, flow: Flow, instance: Doc, source: Host, target: Host, state: str) -> None:
    name = instance["name"]
    xml = (await source.call("GetInstance", {"Name": name, "Migratable": True})).get("XML") or ""
    moved = relisten(xml, await target.listen_address())
    await flow.record("source", undo="kmotion.source",
                      data={"kaktus_id": source.doc["_id"], "name": name, "xml": xml, "state": state})
    await source.shut_down(name, shutdown_grace(res))
    await source.call("DeleteInstance", {"Name": name})
    await flow.step("target", lambda: target.call("CreateInstance", {"Name": name, "XML": moved}),
                    undo="kaktus.domain", data={"kaktus_id": target.doc["_id"], "name": name})
    await move_host(res, instance["_id"], source.doc["_id"], target.doc["_id"])
    await target.restore(name, state)


def relisten(xml: str, address: str) -> str:
    """The domain XML with SPICE listening on `address` (the host it is defined on)."""
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        raise ValueError("domain XML must not carry a DTD or entities")
    root = ET.fromstring(xml)
    for graphics in root.findall("devices/graphics[@type='spice']"):
        if address:
            graphics.set("listen", address)
            for listen in graphics.findall("listen[@type='address']"):
                listen.set("address", address)
    return ET.tostring(root, encoding="unicode")


async def move_host(res, instance_id: str, from_id: str, to_id: str) -> None:
    """The instance (and its Kompute) now on `to_id`, in its zone (the Kaktus usage is moved by
    the flow's own steps). Only when it is still on `from_id` (idempotent)."""
    instance = await res.get("instance", instance_id)
    if instance.get("kaktus_id") != from_id:
        return
    target = await res.get("kaktus", to_id)
    await res.set_fields("instance", instance_id, {"kaktus_id": to_id, "zone_id": target["zone_id"]})
    for kompute in await res.list("kompute", instance_id=instance_id):
        await res.set_fields("kompute", kompute["_id"], {"zone_id": target["zone_id"]})


async def _undo_move(res, data: Doc) -> None:
    """Where the instance ends up, and the usage counters to match (the last undo of a kMotion:
    the cold steps have already put the domain back on the source). Live: wherever the domain is
    (the migration may have happened before the crash). The instance document's `kmotion`
    progress says which counters were already moved."""
    try:
        instance = await res.get("instance", data["instance_id"])
    except NotFoundError:
        return
    on_target = False
    if data.get("live"):
        try:
            await (await Host.of(res, data["target_id"])).state(data["name"])
            on_target = True
        except NotFoundError:
            pass
        except DomainError as exc:
            if not _no_domain(exc):
                raise  # the target unreachable: retried by the flow recovery
    progress = instance.get("kmotion") or {}
    used = footprint(instance)
    source, target = data["source_id"], data["target_id"]
    if on_target:
        await move_host(res, instance["_id"], source, target)
        moves = ([] if progress.get("reserved") else [(target, 1)]) + \
            ([] if progress.get("released") else [(source, -1)])
    else:
        await move_host(res, instance["_id"], target, source)
        moves = ([(target, -1)] if progress.get("reserved") else []) + \
            ([(source, 1)] if progress.get("released") else [])
    for kaktus_id, sign in moves:
        await kaktus_usage(res, kaktus_id, sign * used["vcpus"], sign * used["memory"], sign)
    await res.set_fields("instance", instance["_id"], {"kmotion": {}})


async def _undo_source(res, data: Doc) -> None:
    """The domain defined again on the source (if it went) and back in its earlier power state."""
    try:
        source = await Host.of(res, data["kaktus_id"])
    except NotFoundError:
        return
    try:
        current = await source.state(data["name"])
    except DomainError as exc:
        if not _no_domain(exc):
            raise
        await source.call("CreateInstance", {"Name": data["name"], "XML": data["xml"]})
        current = "Shutoff"
    if current in STOPPED:
        await source.restore(data["name"], data.get("state") or "Shutoff")


register_undo("kmotion.recover", _undo_move)
register_undo("kmotion.source", _undo_source)


def _no_domain(exc: DomainError) -> bool:
    return exc.status == 502 and ("domain not found" in exc.reason.lower() or "no domain" in exc.reason.lower())
