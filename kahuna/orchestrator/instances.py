"""Instances made from existing volumes and adapters: create, update and delete as durable flows.

`POST /project/{p}/zone/{z}/instance` (or `/region/{r}/instance`, placement picking the zone)
takes volumes and adapters by id: each must exist and belong to the project (4xx naming the
field), volumes must lie in the instance's region, exactly one of them is an `os` volume (it
gives the template, hence the guest OS, and is `vda`), and a volume or adapter already used by
another instance is a 409. The flow (kahuna.orchestrator.flows), each step recorded with its
undo before it runs: the document, the quota (instances + 1, vCPUs, memory), placement
(KomputeEffects.place: connected agents, maintenance, capacity, Kwarantine), the volumes
attached (`volume.instance_id`, under each volume's lock, the same one its delete takes), the
cloud-init ISO in the OS volume's pool, the domain, start, the Kaktus usage. A failure or a crash
anywhere leaves nothing behind.

Update (`PUT /instance/{id}`): vCPUs, memory, volumes, adapters, description, kmotion_enabled.
Quota and the host's room (507) for the growth, as a durable flow up to `UpdateInstance`; the domain is re-defined (`UpdateInstance`) and power-cycled only
when it runs and its hardware changed (CPU, RAM, disks or NICs: a re-definition is read at the
next boot, not by an ACPI reboot); the ISO is re-uploaded when what it carries changed and the
A record follows the private address.

Delete: stop, undefine, ISO, Kwarantine memberships, volumes detached (never deleted: upstream
§3.5; a Kompute deletes its own), usage given back. A crash in the middle is finished by the
next start (the flow's undo *completes* the delete, idempotently). An instance made by a
Kompute is updated and deleted through its Kompute (409 here).
"""

from __future__ import annotations

import base64
from typing import Any

import trio

from kahuna import cloudinit
from kahuna.logs import get_logger
from kahuna.orchestrator import dns, placement, virtxml
from kahuna.orchestrator.agent_calls import AgentCalls, AgentTimedOut
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.orchestrator.komputes import (PLACEMENT_LOCK, KomputeEffects, delete_domain, kaktus_usage, refresh_iso,
                                          set_membership)
from kahuna.orchestrator.volumes import VolumeEffects, delete_image
from kahuna.resources import quota
from kahuna.resources.errors import ConflictError, DomainError, InsufficientResources, Invalid, Missing, NotFoundError
from kahuna.resources.service import utcnow
from kahuna.store import errors as store_errors
from kahuna.store.base import delete_if_present

log = get_logger("kahuna.instances")

Doc = dict[str, Any]
AUTOSTART, START, HARD_STOP, SOFT_STOP, SUSPEND = 0, 1, 4, 5, 6
STOPPED = ("Shutoff", "Shutdown", "No State", "Crashed")
SOFT_SHUTDOWN_SECONDS = 60.0  # upstream's ACPI grace (kMotion cold, power cycles)
HARD_SHUTDOWN_SECONDS = 15.0
POLL_SECONDS = 0.5
ATTACHABLE = ("os", "raw")


def _effects(res) -> KomputeEffects:
    return KomputeEffects(res.extras.get("hub"))


def shutdown_grace(res) -> float:
    """Seconds a guest gets to power off on ACPI before it is destroyed (`kmotion.shutdownTimeout`)."""
    return float(getattr(res.extras.get("config"), "kmotion_shutdown_seconds", SOFT_SHUTDOWN_SECONDS))


# ---------------------------------------------------------------------------- checks

async def kompute_of(res, instance_id: str) -> Doc | None:
    found = await res.list("kompute", instance_id=instance_id)
    return found[0] if found else None


async def _owned(res, kind: str, ids: list[str], field: str, project_id: str) -> list[Doc]:
    if len(set(ids)) != len(ids):
        raise Invalid(f"{field}: an id is listed twice")
    docs = []
    for i, doc_id in enumerate(ids):
        try:
            doc = await res.get(kind, doc_id)
        except NotFoundError:
            doc = None
        if doc is None or not await _belongs(res, kind, doc, project_id):
            raise Missing(f"{field}[{i}]: {kind} {doc_id} not found in this project")
        docs.append(doc)
    return docs


async def _belongs(res, kind: str, doc: Doc, project_id: str) -> bool:
    if kind == "volume" or doc.get("project_id"):
        return doc.get("project_id") == project_id
    try:  # an adapter without an owner: the project's when its subnet is the project's
        subnet = await res.get("subnet", doc["subnet_id"])
        project = await res.get("project", project_id)
    except NotFoundError:
        return False
    return subnet.get("project_id") == project_id or subnet["_id"] in (project.get("private_subnets") or {}).values()


async def check_devices(res, doc: Doc) -> tuple[list[Doc], list[Doc]]:
    """The instance's volumes and adapters, checked: the project's, in its region, exactly one
    `os` volume (first), attachable types only. Answers (volumes os first, adapters public first)."""
    volumes = await _owned(res, "volume", list(doc.get("volume_ids") or ()), "volumes", doc["project_id"])
    for i, vol in enumerate(volumes):
        if vol.get("type") not in ATTACHABLE:
            raise Missing(f"volumes[{i}]: a {vol.get('type')} volume cannot be attached to an instance")
        if vol.get("region_id") != doc["region_id"]:
            raise Missing(f"volumes[{i}]: volume {vol['name']} is not in the instance's region")
    os_volumes = [v for v in volumes if v.get("type") == "os"]
    if len(os_volumes) != 1:
        raise Missing(f"volumes: an instance needs exactly one os volume (got {len(os_volumes)})")
    volumes = os_volumes + [v for v in volumes if v.get("type") != "os"]
    adapters = await _owned(res, "adapter", list(doc.get("adapter_ids") or ()), "adapters", doc["project_id"])
    private, public = [], []
    for i, adapter in enumerate(adapters):
        subnet = await res.get("subnet", adapter["subnet_id"])
        vnet = await res.get("vnet", subnet["vnet_id"])
        if vnet.get("region_id") != doc["region_id"]:
            raise Missing(f"adapters[{i}]: adapter {adapter['name']} is not in the instance's region")
        (private if vnet.get("private") else public).append(adapter)
    if len(public) > 1:
        raise Missing("adapters: at most one adapter on a public network")
    return volumes, public + private


async def check_free_adapters(res, doc: Doc, adapters: list[Doc]) -> None:
    """409 when another instance of the project already uses one of the adapters."""
    mine = {a["_id"] for a in adapters}
    for other in await res.list("instance", project_id=doc["project_id"]):
        if other["_id"] == doc["_id"]:
            continue
        taken = mine.intersection(other.get("adapter_ids") or ())
        if taken:
            raise ConflictError(f"adapters: adapter {sorted(taken)[0]} is used by instance {other['name']}")


async def local_ip(res, adapters: list[Doc]) -> str:
    for adapter in adapters:
        vnet = await res.get("vnet", (await res.get("subnet", adapter["subnet_id"]))["vnet_id"])
        if vnet.get("private") and adapter.get("addresses"):
            return adapter["addresses"][0]
    return ""


# ---------------------------------------------------------------------------- attachments

async def attach(res, instance_id: str, volumes: list[Doc]) -> None:
    """`volume.instance_id` set under each volume's own lock (the one `DELETE /volume` takes),
    so an attach and a delete, or two attaches, never both win."""
    for i, vol in enumerate(volumes):
        async with res.locks.hold(("volume", vol["_id"])):
            current = await res.get("volume", vol["_id"])
            holder = current.get("instance_id") or ""
            if holder and holder != instance_id:
                raise ConflictError(f"volumes[{i}]: volume {current['name']} is attached to instance {holder}")
            await res.set_fields("volume", vol["_id"], {"instance_id": instance_id})


async def detach(res, instance_id: str, volume_ids) -> None:
    for vid in volume_ids:
        async with res.locks.hold(("volume", vid)):
            try:
                vol = await res.get("volume", vid)
            except NotFoundError:
                continue
            if vol.get("instance_id") == instance_id:
                await res.set_fields("volume", vid, {"instance_id": ""})


async def _undo_attach(res, data: Doc) -> None:
    await detach(res, data["instance_id"], data.get("volume_ids") or ())


register_undo("instance.attach", _undo_attach)


# ---------------------------------------------------------------------------- usage

def footprint(instance: Doc) -> dict[str, int]:
    return {"vcpus": int(instance["vcpus"]), "memory": int(instance["memory"]), "instances": 1}


async def host_usage(res, flow: Flow | None, kaktus_id: str, sign: int, instance: Doc) -> None:
    """Add (sign=1) or remove (-1) the instance's footprint on a Kaktus; recorded on `flow`
    (undo `kaktus.usage`) right after, as a local store change is (never undo what was not done)."""
    used = {k: sign * v for k, v in footprint(instance).items()}
    await kaktus_usage(res, kaktus_id, used["vcpus"], used["memory"], used["instances"])
    if flow is not None:
        await flow.record(f"usage {kaktus_id}", undo="kaktus.usage", data={"kaktus_id": kaktus_id, **used})


# ---------------------------------------------------------------------------- agent helpers

class Host:
    """A Kaktus as the instance flows call it: its agents, and one call with a readable name."""

    def __init__(self, res, kaktus: Doc) -> None:
        self.res, self.doc = res, kaktus
        self.calls = AgentCalls(res.extras.get("hub"))
        self.what = f"Kaktus {kaktus.get('name')}"

    @classmethod
    async def of(cls, res, kaktus_id: str) -> "Host":
        return cls(res, await res.get("kaktus", kaktus_id))

    async def call(self, method: str, params: Doc) -> Any:
        _, reply = await self.calls.call_one(self.doc.get("agent_ids") or (), method, params, self.what)
        return reply or {}

    async def state(self, name: str) -> str:
        return str((await self.call("GetInstanceState", {"Name": name})).get("State", ""))

    async def power(self, name: str, action: int) -> None:
        await self.call("InstanceOperation", {"Name": name, "Action": action})

    async def listen_address(self) -> str:
        try:
            return (await self.call("GetLibvirtEndpoint", {})).get("Address") or "127.0.0.1"
        except DomainError:
            return "127.0.0.1"

    async def shut_down(self, name: str, grace: float) -> None:
        """ACPI shutdown, polled up to `grace` seconds; then destroyed, polled again (bounded).
        A domain that still runs after both is a 504 (nothing else was touched)."""
        state = await self.state(name)
        if state in STOPPED:
            return
        steps = ((SOFT_STOP, grace), (HARD_STOP, HARD_SHUTDOWN_SECONDS))
        for action, seconds in steps[1:] if state == "Paused" else steps:  # a paused guest hears no ACPI
            await self.power(name, action)
            with trio.move_on_after(seconds):
                while await self.state(name) not in STOPPED:
                    await trio.sleep(POLL_SECONDS)
            if await self.state(name) in STOPPED:
                return
            log.warning("domain still running", kaktus=self.doc["_id"], name=name, action=action)
        raise AgentTimedOut(f"{self.what}: domain {name} did not stop")

    async def restore(self, name: str, state: str) -> None:
        """Bring a domain (defined, stopped) back to a power state seen earlier."""
        if state in STOPPED:
            return
        await self.power(name, START)
        if state in ("Paused", "PM Suspended"):
            await self.power(name, SUSPEND)


async def _volumes_of(res, instance: Doc) -> list[Doc]:
    out = []
    for vid in instance.get("volume_ids") or ():
        try:
            out.append(await res.get("volume", vid))
        except NotFoundError:
            pass
    return out


async def domain_xml(res, instance: Doc, host: Host, volumes: list[Doc]) -> str:
    """The domain of a standalone instance: every volume from its own pool (RBD), the ISO from
    the OS volume's pool, one NIC per adapter on its VNet's bridge, SPICE on the host's address."""
    pools: dict[str, Doc] = {}
    disks = []
    for i, vol in enumerate(volumes):
        pool = pools.get(vol["storage_pool_id"]) or await res.get("pool", vol["storage_pool_id"])
        pools[pool["_id"]] = pool
        disks.append(virtxml.pool_disk(virtxml.disk_dev(i), pool, vol.get("image") or vol["name"]))
    disks.append(virtxml.pool_disk(virtxml.ISO_DEVICE, pools[volumes[0]["storage_pool_id"]], instance["iso_volume"],
                                   cdrom=True))
    template = await _template(res, volumes[0])
    return virtxml.instance_domain(instance, os=template.get("os") or "linux",
                                   spice_listen=await host.listen_address(), disks=tuple(disks),
                                   nics=await _effects(res).nics(res, instance))


async def _template(res, os_volume: Doc) -> Doc:
    try:
        return await res.get("template", os_volume.get("template_id") or "")
    except NotFoundError:
        return {"os": "linux"}


def _iso_params(pool: Doc, image: str, files: dict) -> Doc:
    iso = cloudinit.build_iso(files)
    return {"Pool": pool["libvirt_pool"], "Volume": image, "Size": len(iso),
            "Content": base64.b64encode(iso).decode()}


# ---------------------------------------------------------------------------- create

async def before_create(res, doc: Doc) -> None:
    """Location, devices checked before anything is stored (errors name the field). The
    service set `region_id` from the zone, or `zone_id` "" at region level (placement picks)."""
    project = await res.get("project", doc["project_id"])
    if project.get("region_ids") and doc["region_id"] not in project["region_ids"]:
        raise Missing("region: the project does not use this region")
    volumes, adapters = await check_devices(res, doc)
    doc["volume_ids"], doc["adapter_ids"] = [v["_id"] for v in volumes], [a["_id"] for a in adapters]
    doc.update(kaktus_id="", local_ip=await local_ip(res, adapters), profile="", profile_id="",
               metadata_generation=0, iso_volume=f"{doc['name']}-{doc['_id'][-8:]}-cloudinit", iso_digest="")


async def create(res, doc: Doc) -> None:
    flow = await Flow(res, "instance.create", doc["_id"]).start()
    try:
        await _create(res, doc, flow)
    except BaseException:
        await flow.rollback()
        raise
    await flow.finish()


async def _create(res, doc: Doc, flow: Flow) -> None:
    await flow.record("document", undo="store.delete", data={"collection": "instance", "id": doc["_id"]})
    volumes, adapters = await check_devices(res, doc)
    await check_free_adapters(res, doc, adapters)
    delta = footprint(doc)
    hold = f"{flow.id}-quota"  # recorded before the usage moves, given back only if it did
    await flow.step("quota", lambda: quota.reserve(res, doc["project_id"], hold=hold, **delta),
                    undo="project.hold", data={"project_id": doc["project_id"], "hold": hold})
    project = await res.get("project", doc["project_id"])
    region = await res.get("region", doc["region_id"])
    zones = [await res.get("zone", doc["zone_id"])] if doc["zone_id"] else await res.list("zone", region["_id"])
    async with res.locks.hold(PLACEMENT_LOCK):  # as a Kompute's: place + reserve as one, names global
        if [i for i in await res.list("instance", name=doc["name"]) if i["_id"] != doc["_id"]]:
            raise ConflictError(f"name: an instance named {doc['name']} already exists")
        scope = "" if doc["zone_id"] else f"region {region.get('name')}"
        kaktus = await _effects(res).place(res, doc, zones, scope=scope)
        await host_usage(res, flow, kaktus["_id"], 1, doc)
    doc["zone_id"], doc["kaktus_id"] = kaktus["zone_id"], kaktus["_id"]
    await res.set_fields("instance", doc["_id"], {"zone_id": doc["zone_id"], "kaktus_id": doc["kaktus_id"]})
    await flow.record("attach", undo="instance.attach",
                      data={"instance_id": doc["_id"], "volume_ids": doc["volume_ids"]})
    await attach(res, doc["_id"], volumes)
    if project.get("domain") and doc["local_ip"]:
        data = {"region_id": doc["region_id"], "domain": project["domain"], "name": doc["name"]}
        await flow.step("dns", lambda: dns.instance_record_created(res, **data, addresses=[doc["local_ip"]]),
                        undo="dns.instance", data=data)
    files, pool = await _effects(res).instance_files(res, doc)
    await flow.step("iso", lambda: VolumeEffects(res.extras.get("hub")).call(
        pool, "CreateIsoVolume", _iso_params(pool, doc["iso_volume"], files)),
        undo="volume.image", data={"pool_id": pool["_id"], "image": doc["iso_volume"]})
    host = Host(res, kaktus)
    xml = await domain_xml(res, doc, host, volumes)
    await flow.step("domain", lambda: host.call("CreateInstance", {"Name": doc["name"], "XML": xml}),
                    undo="kaktus.domain", data={"kaktus_id": kaktus["_id"], "name": doc["name"]})
    await host.power(doc["name"], AUTOSTART)
    joined = []
    for kid in doc.get("kwarantine_ids") or ():
        if await set_membership(res, kid, "instance_ids", doc["_id"], True, project_id=doc["project_id"]):
            joined.append(kid)
    doc["kwarantine_ids"], doc["iso_digest"] = joined, cloudinit.digest(files)
    await res.set_fields("instance", doc["_id"], {"kwarantine_ids": joined, "iso_digest": doc["iso_digest"]})
    log.info("instance created", instance=doc["_id"], kaktus=kaktus["_id"])


# ---------------------------------------------------------------------------- update

async def before_update(res, old: Doc, new: Doc) -> None:
    kompute = await kompute_of(res, old["_id"])
    if kompute is not None:
        raise ConflictError(f"instance {old['name']} belongs to Kompute {kompute['name']}: update the Kompute")
    if new["name"] != old["name"]:
        raise Invalid("name: an instance keeps its name (its domain and ISO are named after it)")
    new["kwarantine_ids"] = old.get("kwarantine_ids") or []
    volumes, adapters = await check_devices(res, new)
    if volumes[0]["_id"] != (old.get("volume_ids") or [""])[0]:
        raise Missing("volumes: the os volume of an instance cannot be replaced")
    new["volume_ids"], new["adapter_ids"] = [v["_id"] for v in volumes], [a["_id"] for a in adapters]
    new["local_ip"] = await local_ip(res, adapters)


async def update(res, old: Doc, new: Doc) -> None:
    """A durable flow up to the re-definition: the quota and the host's room for the growth,
    volumes attached, ISO refreshed, `UpdateInstance`; a failure or a crash gives everything back
    (the document and its ISO included). Then volumes taken out are detached and, when the domain
    runs and its hardware changed, it is power-cycled (a re-definition is read at the next boot)."""
    dv, dm = int(new["vcpus"]) - int(old["vcpus"]), int(new["memory"]) - int(old["memory"])
    hardware = bool(dv or dm) or new["volume_ids"] != old.get("volume_ids") or \
        new["adapter_ids"] != old.get("adapter_ids")
    if not hardware and new.get("description") == old.get("description"):
        return
    flow = await Flow(res, "instance.update", new["_id"]).start()
    try:
        await flow.record("document", undo="instance.restore", data={"doc": old})  # stored by the service
        host = await _update(res, flow, old, new, dv, dm)
    except BaseException:
        await flow.rollback()
        raise
    await flow.finish()
    await detach(res, new["_id"], [v for v in old.get("volume_ids") or () if v not in new["volume_ids"]])
    if new.get("local_ip") != old.get("local_ip"):
        await _move_record(res, old, new)
    if hardware:
        await _power_cycle(res, host, new["name"])


async def update_owned(res, old: Doc, new: Doc) -> None:
    """A Kompute's instance given new vCPUs, memory or description (`PUT /kompute/{id}`): the same
    durable flow as `PUT /instance` (quota hold, the host's room, ISO, `UpdateInstance`; a failure
    or a crash gives it all back, the instance document included), the document written inside
    it; then a power cycle when the domain runs and its size changed."""
    dv, dm = int(new["vcpus"]) - int(old["vcpus"]), int(new["memory"]) - int(old["memory"])
    if not (dv or dm) and new.get("description") == old.get("description"):
        return
    flow = await Flow(res, "instance.update", new["_id"]).start()
    try:
        await flow.record("document", undo="instance.restore", data={"doc": old})  # before it changes
        await res.store.replace("instance", {**new, "updated_at": utcnow()})
        host = await _update(res, flow, old, new, dv, dm)
    except BaseException:
        await flow.rollback()
        raise
    await flow.finish()
    if dv or dm:
        await _power_cycle(res, host, new["name"])


async def _power_cycle(res, host: Host, name: str) -> None:
    """libvirt reads a re-definition at the domain's next start: a running one is shut down
    (ACPI, then forced) and started again; a stopped one is left stopped."""
    state = await host.state(name)
    if state not in STOPPED:
        await host.shut_down(name, shutdown_grace(res))
        await host.restore(name, state)


async def _move_record(res, old: Doc, new: Doc) -> None:
    """The A record follows the private address (best effort: a Kiwi that missed it gets it
    from its next Reload, which is built from the instances)."""
    domain = (await res.get("project", new["project_id"])).get("domain") or ""
    if not domain:
        return
    where = {"region_id": new["region_id"], "domain": domain, "name": new["name"]}
    if old.get("local_ip"):
        await dns.instance_record_deleted(res, **where)
    if new.get("local_ip"):
        try:
            await dns.instance_record_created(res, **where, addresses=[new["local_ip"]])
        except DomainError as exc:
            log.warning("instance record not pushed; Kiwi catches up at its next reload", instance=new["_id"],
                        error=exc.reason)


async def _update(res, flow: Flow, old: Doc, new: Doc, dv: int, dm: int) -> Host:
    volumes, adapters = await check_devices(res, new)
    await check_free_adapters(res, new, adapters)
    hold = f"{flow.id}-quota"  # recorded before the usage moves, given back only if it did
    await flow.step("quota", lambda: quota.reserve(res, new["project_id"], hold=hold, vcpus=dv, memory=dm),
                    undo="project.hold", data={"project_id": new["project_id"], "hold": hold})
    host = await Host.of(res, new["kaktus_id"])
    if dv > 0 or dm > 0:
        async with res.locks.hold(PLACEMENT_LOCK):  # the host's room, checked and taken as one
            node = await res.get("kaktus", new["kaktus_id"])
            room = placement.candidate_from_kaktus(node)
            if room.cpu_threads and room.free_vcpus < dv:
                raise InsufficientResources(f"vcpus: Kaktus {node['name']} has {max(0, room.free_vcpus)} free vCPUs")
            if room.memory and room.free_memory < dm:
                raise InsufficientResources(f"memory: Kaktus {node['name']} has {max(0, room.free_memory)} "
                                            "bytes of free memory")
            await kaktus_usage(res, node["_id"], dv, dm, 0)
            await flow.record("host usage", undo="kaktus.usage",
                              data={"kaktus_id": node["_id"], "vcpus": dv, "memory": dm, "instances": 0})
    elif dv or dm:
        await kaktus_usage(res, new["kaktus_id"], dv, dm, 0)
        await flow.record("host usage", undo="kaktus.usage",
                          data={"kaktus_id": new["kaktus_id"], "vcpus": dv, "memory": dm, "instances": 0})
    added = [v for v in volumes if v["_id"] not in (old.get("volume_ids") or ())]
    await flow.record("attach", undo="instance.attach",
                      data={"instance_id": new["_id"], "volume_ids": [v["_id"] for v in added]})
    await attach(res, new["_id"], added)
    await refresh_iso(res, new["_id"])  # the stored document is already the new one
    xml = await domain_xml(res, new, host, volumes)
    await host.call("UpdateInstance", {"Name": new["name"], "XML": xml})
    return host


async def _undo_update(res, data: Doc) -> None:
    """The document as it was, and its ISO rendered from it again (best effort: the ISO only
    matters at the guest's next boot, and a refresh retries it)."""
    old = data["doc"]
    try:
        await res.store.replace("instance", old)
    except store_errors.NotFound:
        return
    try:
        await refresh_iso(res, old["_id"])
    except DomainError as exc:
        log.warning("cloud-init ISO not restored", instance=old["_id"], error=exc.reason)


register_undo("instance.restore", _undo_update)


# ---------------------------------------------------------------------------- delete

async def delete(res, instance_id: str) -> None:
    """`DELETE /instance/{id}`. The agent side first (stop, undefine, ISO): a failure there
    answers the agent's error and leaves the instance in place, to be deleted again. A flow
    records the delete before anything is done, so that a crash in the middle is *finished*
    by the next start (its undo completes the delete, idempotently)."""
    async with res.locks.hold(("instance", instance_id)):
        doc = await res.get("instance", instance_id)
        kompute = await kompute_of(res, doc["_id"])
        if kompute is not None:
            raise ConflictError(f"instance {doc['name']} belongs to Kompute {kompute['name']}: delete the Kompute")
        flow = await Flow(res, "instance.delete", doc["_id"]).start()
        try:
            await flow.record("delete", undo="instance.delete",
                              data={"instance": _essentials(doc), "hold": f"{flow.id}-release"})
            await _delete_on_agents(res, doc)
        except BaseException:
            await flow.finish()  # the instance stays as it is: nothing to finish later
            raise
        with trio.CancelScope(shield=True):  # the domain is gone: the documents follow
            await finish_delete(res, _essentials(doc), hold=f"{flow.id}-release")
            await flow.finish()
    log.info("instance deleted", instance=instance_id)


def _essentials(doc: Doc) -> Doc:
    keys = ("_id", "project_id", "kaktus_id", "name", "vcpus", "memory", "volume_ids", "kwarantine_ids",
            "iso_volume")
    return {k: doc.get(k) for k in keys}


async def _delete_on_agents(res, doc: Doc) -> None:
    if doc.get("kaktus_id"):
        try:
            host = await Host.of(res, doc["kaktus_id"])
        except NotFoundError:
            host = None
        if host is not None:
            try:
                await host.power(doc["name"], HARD_STOP)
            except DomainError as exc:
                if exc.status != 502:  # unreachable: stop here, nothing changed
                    raise
            await delete_domain(host.calls, res, doc["kaktus_id"], doc["name"])
    project = await res.get("project", doc["project_id"])
    if project.get("domain") and doc.get("local_ip"):
        await dns.instance_record_deleted(res, region_id=doc["region_id"], domain=project["domain"], name=doc["name"])
    volumes = await _volumes_of(res, doc)
    if volumes and doc.get("iso_volume"):
        try:
            pool = await res.get("pool", volumes[0]["storage_pool_id"])
        except NotFoundError:
            return
        await delete_image(VolumeEffects(res.extras.get("hub")), pool, doc["iso_volume"])


async def finish_delete(res, doc: Doc, *, hold: str = "") -> None:
    """The store side of a delete, idempotent: memberships, volumes detached (never deleted:
    upstream §3.5), the document, then the usage it held: given back once per `hold` (the delete
    flow's), also when a crash fell between the document's delete and the give-back; without a
    hold (a flow stored by an older process) only by the call that removed the document."""
    for kid in doc.get("kwarantine_ids") or ():
        await set_membership(res, kid, "instance_ids", doc["_id"], False)
    await detach(res, doc["_id"], doc.get("volume_ids") or ())
    removed = await delete_if_present(res.store, "instance", doc["_id"])
    if hold:
        await quota.release_once(res, doc["project_id"], hold, **footprint(doc))
    elif removed:
        await quota.release(res, doc["project_id"], **footprint(doc))
    if removed and doc.get("kaktus_id"):
        await host_usage(res, None, doc["kaktus_id"], -1, doc)


async def _undo_delete(res, data: Doc) -> None:
    """Recovery of a delete cut short: finish it (agent side again, then the store side)."""
    hold = data.get("hold") or ""  # absent in a flow stored by an older process
    try:
        current = await res.get("instance", data["instance"]["_id"])
    except NotFoundError:  # the document went before the crash: its usage may not have
        if hold:
            await quota.release_once(res, data["instance"]["project_id"], hold, **footprint(data["instance"]))
        return
    await _delete_on_agents(res, current)
    await finish_delete(res, _essentials(current), hold=hold)


register_undo("instance.delete", _undo_delete)
