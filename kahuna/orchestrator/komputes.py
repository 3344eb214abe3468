"""Kompute create and delete as durable flows (kahuna.orchestrator.flows).

Create (`create_kompute`, or the route's hooks), each step recorded with its undo's data before it
runs: the Kompute document; the quota (instances + 1, vCPUs, memory); under one placement lock
(never held across an agent call): the name check (no instance, no RBD image of that name), the
choice of a Kaktus (kahuna.orchestrator.placement), its usage reserved and the instance document
inserted — so parallel creates never overcommit a host nor share image names; the OS volume
`<name>-os` cloned from the template and the data volume `<name>-data` (storage quota with them,
kahuna.orchestrator.volumes); the adapters (kahuna.orchestrator.adapters): `<name>-private-adapter`
on the project's private subnet of the region (its address is the instance's `local_ip`),
`<name>-public-adapter` on the region's public subnet (an address only when `public`), one
`<name>-peering-private-adapter` per peering subnet; the instance's A record `name.<project domain>`
on the region's Kiwis (kahuna.orchestrator.dns); the cloud-init ISO `<name>-cloudinit`
(`CreateIsoVolume`, base64); the domain (`CreateInstance` with kahuna.orchestrator.virtxml's XML,
NICs included), then start. Any failure undoes in reverse, and a SIGKILL is undone at restart.

Delete is a *forward* flow: its plan (every id and name involved) is stored first, each step
marked done when it is; a failure or a SIGKILL leaves the flow stored and recovery finishes it
(domain, ISO, volumes, adapters, DNS record, documents, usage). A delete goes forward, not back.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from kahuna import cloudinit
from kahuna.logs import get_logger
from kahuna.auth.instance_tokens import instance_token
from kahuna.orchestrator import dns, placement, virtxml
from kahuna.orchestrator.adapters import create_adapter, delete_adapter
from kahuna.orchestrator.agent_calls import AgentCalls
from kahuna.orchestrator.flows import Flow, register_resume, register_undo
from kahuna.orchestrator.volumes import VolumeEffects, delete_image
from kahuna.resources import project_net, quota
from kahuna.resources.errors import ConflictError, DomainError, NotFoundError
from kahuna.resources.service import utcnow
from kahuna.resources.volume import pool_and_template
from kahuna.store.base import delete_if_present, new_id

log = get_logger("kahuna.komputes")

Doc = dict[str, Any]
MetaExtras = Callable[[Any, Doc], Awaitable[dict]]
START = 1  # InstanceOperation actions (upstream-kahuna §3.4)
PLACEMENT_LOCK = ("kompute-placement",)
DELETE_FLOW = "kompute.delete"
_META_EXTRAS: dict[str, MetaExtras] = {}  # profile -> the appliance's cloud-init controller fields


@dataclass(frozen=True)
class KomputeSpec:
    """A Kompute to make (the route's body and query, or an appliance's request).

    zone_id "" = region level (placement picks the zone); memory/disk/data_disk in bytes;
    profile "kawaii"/"konvey" for appliances, with profile_id the appliance's id;
    peering_subnet_ids: one extra adapter (address assigned) per subnet (Kawaii VPC peering)."""

    project_id: str
    region_id: str
    zone_id: str
    name: str
    vcpus: int
    memory: int
    disk: int
    data_disk: int = 0
    public: bool = False
    pool_id: str = ""
    template_id: str = ""
    description: str = ""
    profile: str = ""
    profile_id: str = ""
    kwarantine_ids: tuple[str, ...] = ()
    exclude_kaktus_ids: frozenset[str] = field(default_factory=frozenset)
    peering_subnet_ids: tuple[str, ...] = ()
    uefi: bool = False  # appliances boot their images as upstream does (legacy BIOS); the API's default is True


def register_meta_extras(profile: str, fn: MetaExtras) -> None:
    """The controller fields (`controller_url`, `controller_agent_id`, `controller_agent_token`)
    of an appliance profile's cloud-init, asked each time its ISO is (re)built — also after a
    restart, so an appliance module registers it at import."""
    _META_EXTRAS[profile] = fn


async def create_kompute(res, spec: KomputeSpec, *, meta_extras: MetaExtras | None = None) -> Doc:
    """The whole durable create (its own flow); the Kompute document. Nothing is left on failure."""
    if meta_extras is not None and spec.profile:
        register_meta_extras(spec.profile, meta_extras)
    payload = {"name": spec.name, "description": spec.description, "vcpus": spec.vcpus, "memory": spec.memory,
               "disk": spec.disk, "data_disk": spec.data_disk, "kwarantines": list(spec.kwarantine_ids),
               "uefi": spec.uefi}
    location = ("zone_id", spec.zone_id) if spec.zone_id else ("region_id", spec.region_id)
    return await res.create("kompute", payload, owner_id=spec.project_id, location=location, spec=spec,
                            meta_extras=meta_extras)


def spec_fields(spec: KomputeSpec) -> Doc:
    """What the Kompute document keeps of a spec beyond its API fields."""
    return {"public": spec.public, "pool_id": spec.pool_id, "template_id": spec.template_id,
            "profile": spec.profile, "profile_id": spec.profile_id,
            "peering_subnet_ids": list(spec.peering_subnet_ids),
            "exclude_kaktus_ids": sorted(spec.exclude_kaktus_ids)}


async def delete_kompute(res, kompute_id: str) -> None:
    """Delete a Kompute and all it holds (durable, forward); one already gone counts as deleted."""
    try:
        await res.delete("kompute", kompute_id)
    except NotFoundError:
        return


async def refresh_iso(res, instance_id: str) -> None:
    """Re-render the instance's cloud-init; `UpdateIsoVolume` when what it carries changed."""
    effects = KomputeEffects(res.extras.get("hub"))
    instance = await res.get("instance", instance_id)
    files, pool = await effects.instance_files(res, instance)
    digest = cloudinit.digest(files)
    if digest == instance.get("iso_digest"):
        return
    iso = cloudinit.build_iso(files)
    await effects.volumes.call(pool, "UpdateIsoVolume", {
        "Pool": pool["libvirt_pool"], "Volume": instance["iso_volume"], "Size": len(iso),
        "Content": base64.b64encode(iso).decode()})
    await res.set_fields("instance", instance_id, {"iso_digest": digest})
    log.info("cloud-init ISO refreshed", instance=instance_id)


# ------------------------------------------------------------------------------ network facts

async def zone_gateway(res, project: Doc, zone_id: str) -> str:
    """The project's gateway address in the zone, "" when it has none (a zone added later)."""
    try:
        return await project_net.zone_gateway(res, project, zone_id)
    except DomainError:
        return ""


async def public_subnet(res, region_id: str, public: bool) -> Doc | None:
    """The region's public subnet for the public NIC (upstream always makes it); None when the
    region has no public network and no address is wanted (422 when one is)."""
    try:
        return await project_net.public_subnet(res, region_id, 1 if public else 0)
    except DomainError as exc:  # 422: the region has no public network
        if public or exc.status != 422:
            raise
        return None


# ------------------------------------------------------------------------------------- create

class KomputeEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)
        self.volumes = VolumeEffects(hub)

    async def create(self, res, kompute: Doc) -> None:
        flow = await Flow(res, "kompute.create", kompute["_id"]).start()
        try:
            await self._create(res, kompute, flow)
        except BaseException:
            await flow.rollback()
            raise
        await flow.finish()

    async def _create(self, res, kompute: Doc, flow: Flow) -> None:
        await flow.record("document", undo="store.delete", data={"collection": "kompute", "id": kompute["_id"]})
        project = await res.get("project", kompute["project_id"])
        region = await res.get("region", kompute["region_id"])
        zones = [await res.get("zone", kompute["zone_id"])] if kompute.get("zone_id") else \
            await res.list("zone", region["_id"])
        pool, template = await pool_and_template(res, region, kompute.get("pool_id") or "",
                                                 kompute.get("template_id") or "")
        private = await project_net.private_subnet(res, project, region["_id"])
        public = await public_subnet(res, region["_id"], bool(kompute.get("public")))
        vcpus, memory = int(kompute["vcpus"]), int(kompute["memory"])
        disk, data_disk = int(kompute["disk"]), int(kompute.get("data_disk") or 0)
        delta = {"instances": 1, "vcpus": vcpus, "memory": memory}
        hold = f"{flow.id}-quota"  # recorded before the usage moves, given back only if it did
        await flow.step("quota", lambda: quota.reserve(res, project["_id"], hold=hold, **delta),
                        undo="project.hold", data={"project_id": project["_id"], "hold": hold})
        name = kompute["name"]
        images = [f"{name}-os", f"{name}-cloudinit"] + ([f"{name}-data"] if data_disk else [])
        instance_id = new_id()
        async with res.locks.hold(PLACEMENT_LOCK):  # place + reserve as one: no overcommit, no name clash
            await self._check_names(res, name, pool, images)
            kaktus = await self.place(res, kompute, zones, scope=f"region {region.get('name')}"
                                      if not kompute.get("zone_id") else "")
            await kaktus_usage(res, kaktus["_id"], vcpus, memory, 1)
            await flow.record("kaktus usage", undo="kaktus.usage",
                              data={"kaktus_id": kaktus["_id"], "vcpus": vcpus, "memory": memory, "instances": 1})
            zone = next(z for z in zones if z["_id"] == kaktus["zone_id"])
            now = utcnow()
            instance = {"_id": instance_id, "schema_version": 2, "created_at": now, "updated_at": now,
                        "project_id": project["_id"], "zone_id": zone["_id"], "region_id": region["_id"],
                        "kaktus_id": kaktus["_id"], "name": name, "description": kompute.get("description", ""),
                        "vcpus": vcpus, "memory": memory, "volume_ids": [], "adapter_ids": [], "local_ip": "",
                        "public_ip": "", "profile": kompute.get("profile") or "",
                        "profile_id": kompute.get("profile_id") or "", "metadata_generation": 0,
                        "uefi": bool(kompute.get("uefi", True)),  # the domain's firmware follows the Kompute
                        "iso_volume": f"{name}-cloudinit", "iso_digest": "",
                        "cost": {"price": 0.0, "currency": "EUR"}}
            await flow.record("instance", undo="store.delete", data={"collection": "instance", "id": instance_id})
            await res.store.insert("instance", instance)
        if kompute.get("zone_id") != zone["_id"]:
            kompute["zone_id"] = zone["_id"]
            await res.store.update_fields("kompute", kompute["_id"], {"zone_id": zone["_id"]})
        volumes = [self._volume_doc(kompute, pool, f"{name}-os", "os", disk, template["_id"])]
        if data_disk:
            volumes.append(self._volume_doc(kompute, pool, f"{name}-data", "raw", data_disk, ""))
        for vol in volumes:
            vol["instance_id"] = instance_id
            await res.store.insert("volume", vol)
            await self.volumes.create_in(res, vol, flow)  # records document, storage quota, image
        instance["volume_ids"] = [v["_id"] for v in volumes]
        await self._adapters(res, flow, kompute, instance, private, public)
        await res.store.update_fields("instance", instance_id, {
            k: instance[k] for k in ("volume_ids", "adapter_ids", "local_ip", "public_ip")})
        await self._dns(res, flow, project, instance)
        files, _ = await self.instance_files(res, instance)
        iso = cloudinit.build_iso(files)
        instance["iso_digest"] = cloudinit.digest(files)
        await flow.step("iso", lambda: self.volumes.call(pool, "CreateIsoVolume", {
            "Pool": pool["libvirt_pool"], "Volume": instance["iso_volume"], "Size": len(iso),
            "Content": base64.b64encode(iso).decode()}),
            undo="volume.image", data={"pool_id": pool["_id"], "image": instance["iso_volume"]})
        xml = await self.domain_xml(kaktus, pool, instance, volumes, template,
                                    nics=await self.nics(res, instance))
        agent_id = self.calls.pick(kaktus.get("agent_ids") or (), "CreateInstance", f"Kaktus {kaktus['name']}")
        await flow.step("domain", lambda: self.calls.call(agent_id, "CreateInstance", {"Name": name, "XML": xml}),
                        undo="kaktus.domain", data={"kaktus_id": kaktus["_id"], "name": name})
        await self.calls.call(agent_id, "InstanceOperation", {"Name": name, "Action": START})
        await res.store.update_fields("instance", instance_id, {"iso_digest": instance["iso_digest"]})
        await res.store.update_fields("kompute", kompute["_id"], {"instance_id": instance_id,
                                                                  "ip": instance["local_ip"]})
        kompute["instance_id"], kompute["ip"] = instance_id, instance["local_ip"]
        await join_kwarantines(res, kompute)
        log.info("kompute created", kompute=kompute["_id"], instance=instance_id, kaktus=kaktus["_id"],
                 ip=instance["local_ip"])

    @staticmethod
    async def _check_names(res, name: str, pool: Doc, images: list[str]) -> None:
        """Instance names are global (upstream), and they name the RBD images of the pool."""
        if await res.list("instance", name=name):
            raise ConflictError(f"name: an instance named {name} already exists")
        for image in images:
            if await res.list("volume", storage_pool_id=pool["_id"], image=image):
                raise ConflictError(f"name: storage pool {pool.get('name')} already holds an image {image}")

    async def _adapters(self, res, flow: Flow, kompute: Doc, instance: Doc, private: Doc,
                        public: Doc | None) -> None:
        name, project_id = kompute["name"], kompute["project_id"]
        adapter = await create_adapter(res, flow, subnet_id=private["_id"], name=f"{name}-private-adapter",
                                       project_id=project_id, assign_ip=True)
        instance["adapter_ids"].append(adapter["_id"])
        instance["local_ip"] = (adapter.get("addresses") or [""])[0]
        if public is not None:
            adapter = await create_adapter(res, flow, subnet_id=public["_id"], name=f"{name}-public-adapter",
                                           project_id=project_id, assign_ip=bool(kompute.get("public")))
            instance["adapter_ids"].append(adapter["_id"])
            instance["public_ip"] = (adapter.get("addresses") or [""])[0]
        for subnet_id in kompute.get("peering_subnet_ids") or ():
            adapter = await create_adapter(res, flow, subnet_id=subnet_id, name=f"{name}-peering-private-adapter",
                                           project_id=project_id, assign_ip=True)
            instance["adapter_ids"].append(adapter["_id"])

    @staticmethod
    async def _dns(res, flow: Flow, project: Doc, instance: Doc) -> None:
        domain = project.get("domain") or ""
        if not domain or not instance["local_ip"]:
            return
        data = {"region_id": instance["region_id"], "domain": domain, "name": instance["name"]}
        await flow.step("dns", lambda: dns.instance_record_created(res, **data, addresses=[instance["local_ip"]]),
                        undo="dns.instance", data=data)

    @staticmethod
    def _volume_doc(kompute: Doc, pool: Doc, name: str, vtype: str, size: int, template_id: str) -> Doc:
        now = utcnow()
        return {"_id": new_id(), "schema_version": 2, "created_at": now, "updated_at": now,
                "project_id": kompute["project_id"], "region_id": kompute["region_id"],
                "storage_pool_id": pool["_id"], "name": name, "description": "", "type": vtype, "size": size,
                "image": name, "template_id": template_id, "instance_id": ""}

    async def place(self, res, kompute: Doc, zones: list[Doc], scope: str = "") -> Doc:
        names = {z["_id"]: z.get("name", "") for z in zones}
        kaktuses = [k for z in zones for k in await res.list("kaktus", z["_id"])]
        candidates, by_id = [], {}
        for k in kaktuses:
            agents = k.get("agent_ids") or ()
            methods = {m for m in placement.DEFAULT_METHODS if self.calls.eligible(agents, m)}
            here = [i["name"] for i in await res.list("instance", kaktus_id=k["_id"])]
            candidates.append(placement.candidate_from_kaktus(
                k, zone_name=names.get(k.get("zone_id"), ""), connected=bool(methods), methods=methods,
                instance_names=here))
            by_id[k["_id"]] = k
        request = placement.PlacementRequest(name=kompute["name"], vcpus=int(kompute["vcpus"]),
                                             memory=int(kompute["memory"]),
                                             scope=scope or f"zone {zones[0].get('name') if zones else ''}",
                                             kwarantines=tuple(await kwarantines_of(res, kompute)),
                                             exclude_hosts=frozenset(kompute.get("exclude_kaktus_ids") or ()))
        return by_id[placement.choose_host(request, candidates).id]

    # ------------------------------------------------------------------------ cloud-init, XML

    async def adapter_facts(self, res, instance: Doc) -> list[tuple[Doc, Doc, Doc]]:
        """(adapter, subnet, vnet) of the instance's NICs in guest device order: the adapter on a
        public network first, then the others in `adapter_ids` order (upstream §3.1 step 3)."""
        out = []
        for adapter_id in instance.get("adapter_ids") or ():
            try:
                adapter = await res.get("adapter", adapter_id)
                subnet = await res.get("subnet", adapter["subnet_id"])
                vnet = await res.get("vnet", subnet["vnet_id"])
            except NotFoundError:
                continue
            out.append((adapter, subnet, vnet))
        out.sort(key=lambda t: bool(t[2].get("private", True)))  # stable: public first
        return out

    async def nics(self, res, instance: Doc) -> tuple[virtxml.NicSpec, ...]:
        return tuple(virtxml.NicSpec(mac=a["mac"], bridge=v["interface"])
                     for a, _, v in await self.adapter_facts(res, instance))

    async def instance_files(self, res, instance: Doc) -> tuple[dict, Doc]:
        """The cloud-init files of a stored instance (and the pool of its OS volume)."""
        project = await res.get("project", instance["project_id"])
        region = await res.get("region", instance["region_id"])
        zone = await res.get("zone", instance["zone_id"])
        os_volume = await res.get("volume", instance["volume_ids"][0])
        pool = await res.get("pool", os_volume["storage_pool_id"])
        template = await res.get("template", os_volume["template_id"])
        adapters = tuple(cloudinit.NetAdapter(
            mac=a["mac"], cidr=s["cidr"], addresses=tuple(a.get("addresses") or ()), gateway=s.get("gateway", ""),
            dns=s.get("dns", ""), routes=tuple(s.get("routes") or ()))
            for a, s, _ in await self.adapter_facts(res, instance))
        extras: dict = {}
        hook = _META_EXTRAS.get(instance.get("profile") or "")
        if hook is not None:
            extras = dict(await hook(res, instance))
        files = self.cloudinit_files(res, project, region, zone, instance, template, adapters=adapters,
                                     zone_gateway=await zone_gateway(res, project, zone["_id"]), extras=extras)
        return files, pool

    def cloudinit_files(self, res, project: Doc, region: Doc, zone: Doc, instance: Doc, template: Doc, *,
                        adapters: tuple = (), zone_gateway: str = "", extras: dict | None = None) -> dict:
        config, secrets = res.extras.get("config"), res.extras.get("secrets")
        public_url = getattr(config, "public_url", "http://127.0.0.1:8080") if config else "http://127.0.0.1:8080"
        token = instance_token(secrets.server_secret, instance["_id"], instance["metadata_generation"]) if secrets else ""
        profile = cloudinit.CloudInitProfile(
            hostname=instance["name"], instance_id=instance["_id"], os=template.get("os", "linux"),
            profile=instance.get("profile") or "",
            domain=project.get("domain") or region.get("domain", ""), region=region.get("name", ""),
            zone=zone.get("name", ""), service_user=project.get("bootstrap_user") or "kowabunga",
            service_user_pubkey=project.get("bootstrap_pubkey", ""),
            metadata_url=public_url + "/latest/meta-data", metadata_token=token,
            local_ip=instance.get("local_ip") or "", zone_gateway=zone_gateway, adapters=tuple(adapters),
            **(extras or {}))
        return cloudinit.render(profile)

    async def domain_xml(self, kaktus: Doc, pool: Doc, instance: Doc, volumes: list[Doc], template: Doc,
                         nics: tuple = ()) -> str:
        listen = "127.0.0.1"
        agents = kaktus.get("agent_ids") or ()
        if self.calls.eligible(agents, "GetLibvirtEndpoint"):
            try:
                _, ep = await self.calls.call_one(agents, "GetLibvirtEndpoint", {}, f"Kaktus {kaktus['name']}")
                listen = (ep or {}).get("Address") or listen
            except DomainError:
                pass
        disks = [virtxml.pool_disk(virtxml.disk_dev(i), pool, v["image"]) for i, v in enumerate(volumes)]
        disks.append(virtxml.pool_disk(virtxml.ISO_DEVICE, pool, instance["iso_volume"], cdrom=True))
        return virtxml.instance_domain(instance, os=template.get("os", "linux"), spice_listen=listen,
                                       disks=tuple(disks), nics=tuple(nics))

    # ---------------------------------------------------------------------------- update

    async def grow_disks(self, res, old: Doc, new: Doc) -> Doc:
        """The Kompute's volumes grown to its new `disk` / `data_disk` (each a durable resize with
        its own storage hold, kahuna.orchestrator.volumes); answers its instance document. Its
        vCPUs, memory and description go through the instance's own durable update
        (kahuna.orchestrator.instances.update_owned: quota, the host's room, `UpdateInstance`,
        power cycle), called by the Kompute kind after this."""
        instance = await res.get("instance", new["instance_id"])
        volumes = [await res.get("volume", v) for v in instance.get("volume_ids") or ()]
        wanted = [int(new["disk"])] + ([int(new["data_disk"])] if len(volumes) > 1 else [])
        for vol, size in zip(volumes, wanted):
            if size > int(vol["size"]):
                await self.volumes.resize(res, {**vol, "size": size}, size - int(vol["size"]))
        return instance

    # ---------------------------------------------------------------------------- delete

    async def delete(self, res, kompute: Doc) -> Flow:
        """Everything but the Kompute document, as a forward flow; answers the flow, which the
        caller finishes once the document is gone (`Flow.finish`) — a crash before that makes
        recovery drop the document too."""
        plan = await delete_plan(res, kompute)
        flow = await Flow(res, DELETE_FLOW, kompute["_id"]).start(resume=plan)
        try:
            await run_delete(res, flow, plan, upto="document")
        except BaseException:
            flow.release()  # recovery finishes it (in this process too: recover_loop)
            raise
        return flow


async def delete_plan(res, kompute: Doc) -> Doc:
    """Every id and name a Kompute delete needs, read once before anything goes."""
    plan: Doc = {"kompute_id": kompute["_id"], "project_id": kompute["project_id"],
                 "kwarantine_ids": list(kompute.get("kwarantine_ids") or ()), "instance": None,
                 "volumes": [], "pool_id": "", "domain": ""}
    try:
        instance = await res.get("instance", kompute.get("instance_id") or "")
    except NotFoundError:
        instance = None
    if instance is None:
        found = await res.list("instance", name=kompute["name"], project_id=kompute["project_id"])
        instance = found[0] if found else None  # a create still running or interrupted
    if instance is None:
        return plan
    plan["instance"] = {k: instance.get(k) for k in ("_id", "name", "kaktus_id", "vcpus", "memory", "iso_volume",
                                                     "adapter_ids", "region_id", "project_id")}
    for vid in instance.get("volume_ids") or ():
        try:
            vol = await res.get("volume", vid)
        except NotFoundError:
            continue
        plan["volumes"].append({"_id": vol["_id"], "size": int(vol["size"]), "project_id": vol["project_id"],
                                "storage_pool_id": vol["storage_pool_id"], "image": vol.get("image") or vol["name"]})
        plan["pool_id"] = plan["pool_id"] or vol["storage_pool_id"]
    try:
        project = await res.get("project", kompute["project_id"])
        plan["domain"] = project.get("domain") or ""
    except NotFoundError:
        pass
    return plan


def delete_steps(plan: Doc) -> list[str]:
    inst = plan.get("instance")
    if not inst:
        return ["kwarantines", "document"]
    return (["domain", "iso"] + [f"volume {v['_id']}" for v in plan["volumes"]]
            + [f"adapter {a}" for a in inst.get("adapter_ids") or ()]
            + ["dns", "instance", "kwarantines", "document"])


async def run_delete(res, flow: Flow, plan: Doc, upto: str = "") -> None:
    """Run the delete steps not done yet, in order, each marked done; stop before `upto`."""
    calls = AgentCalls(res.extras.get("hub"))
    effects = VolumeEffects(res.extras.get("hub"))
    inst = plan.get("instance") or {}
    volumes = {f"volume {v['_id']}": v for v in plan["volumes"]}
    for step in delete_steps(plan):
        if step == upto:
            return
        if flow.is_done(step):
            continue
        if step == "domain":
            await delete_domain(calls, res, inst["kaktus_id"], inst["name"])
        elif step == "iso":
            await _delete_pool_image(res, effects, plan["pool_id"], inst.get("iso_volume") or f"{inst['name']}-cloudinit")
        elif step in volumes:
            vol = volumes[step]
            await _delete_pool_image(res, effects, vol["storage_pool_id"], vol["image"])
            await delete_if_present(res.store, "volume", vol["_id"])
            # once, even when a crash fell between the delete and the give-back
            await quota.release_once(res, vol["project_id"], f"{flow.id}-{vol['_id']}", storage=int(vol["size"]))
        elif step.startswith("adapter "):
            await delete_adapter(res, step.split(" ", 1)[1])
        elif step == "dns":
            if plan.get("domain"):
                await dns.instance_record_deleted(res, region_id=inst["region_id"], domain=plan["domain"],
                                                  name=inst["name"])
        elif step == "instance":
            removed = await delete_if_present(res.store, "instance", inst["_id"])
            await quota.release_once(res, plan["project_id"], f"{flow.id}-instance", instances=1,
                                     vcpus=int(inst["vcpus"]), memory=int(inst["memory"]))
            if removed:
                await kaktus_usage(res, inst["kaktus_id"], -int(inst["vcpus"]), -int(inst["memory"]), -1)
        elif step == "kwarantines":
            for kid in plan.get("kwarantine_ids") or ():
                await set_membership(res, kid, "kompute_ids", plan["kompute_id"], False)
        elif step == "document":
            await delete_if_present(res.store, "kompute", plan["kompute_id"])
        await flow.mark_done(step)


async def _resume_delete(res, flow: Flow) -> None:
    await run_delete(res, flow, flow.plan)


async def _delete_pool_image(res, effects: VolumeEffects, pool_id: str, image: str) -> None:
    try:
        pool = await res.get("pool", pool_id)
    except NotFoundError:
        return
    await delete_image(effects, pool, image)


# ------------------------------------------------------------------------------ usage, groups

async def kaktus_usage(res, kaktus_id: str, vcpus: int, memory: int, instances: int) -> None:
    async with res.locks.hold(("kaktus-usage", kaktus_id)):
        try:
            k = await res.get("kaktus", kaktus_id)
        except NotFoundError:
            return
        usage = dict(k.get("usage") or {})
        usage["vcpus"] = max(0, int(usage.get("vcpus", 0)) + vcpus)
        usage["memory"] = max(0, int(usage.get("memory", 0)) + memory)
        usage["instances"] = max(0, int(usage.get("instances", 0)) + instances)
        await res.set_fields("kaktus", kaktus_id, {"usage": usage})


async def kwarantines_of(res, kompute: Doc) -> list:
    """The anti-affinity groups the new Kompute joins (unknown ids or other projects' ignored,
    upstream), with the Kaktus and zones of their other members."""
    out = []
    for kid in kompute.get("kwarantine_ids") or ():
        try:
            group = await res.get("kwarantine", kid)
        except NotFoundError:
            continue
        if group.get("project_id") != kompute["project_id"]:
            continue
        instance_ids = list(group.get("instance_ids") or ())
        for member in group.get("kompute_ids") or ():
            try:
                instance_ids.append((await res.get("kompute", member)).get("instance_id"))
            except NotFoundError:
                pass
        hosts, zones = set(), set()
        for iid in instance_ids:
            try:
                inst = await res.get("instance", iid or "")
            except NotFoundError:
                continue
            hosts.add(inst["kaktus_id"])
            zones.add(inst["zone_id"])
        out.append(placement.Kwarantine(name=group["name"], policy=group.get("policy", "host"),
                                        hosts=frozenset(hosts), zones=frozenset(zones)))
    return out


async def join_kwarantines(res, kompute: Doc) -> None:
    for kid in kompute.get("kwarantine_ids") or ():
        await set_membership(res, kid, "kompute_ids", kompute["_id"], True, project_id=kompute["project_id"])


async def set_membership(res, kwarantine_id: str, field: str, member_id: str, present: bool,
                         project_id: str | None = None) -> Doc | None:
    async with res.locks.hold(("kwarantine", kwarantine_id)):
        try:
            group = await res.get("kwarantine", kwarantine_id)
        except NotFoundError:
            return None
        if project_id is not None and group.get("project_id") != project_id:
            return None
        members = [m for m in group.get(field) or () if m != member_id] + ([member_id] if present else [])
        return await res.set_fields("kwarantine", kwarantine_id, {field: members})


async def delete_domain(calls: AgentCalls, res, kaktus_id: str, name: str) -> None:
    try:
        kaktus = await res.get("kaktus", kaktus_id)
    except NotFoundError:
        return
    try:
        await calls.call_one(kaktus.get("agent_ids") or (), "DeleteInstance", {"Name": name},
                             f"Kaktus {kaktus['name']}")
    except DomainError as exc:
        if "Domain not found" not in exc.reason and "no domain" not in exc.reason:
            raise


async def _undo_domain(res, data: Doc) -> None:
    await delete_domain(AgentCalls(res.extras.get("hub")), res, data["kaktus_id"], data["name"])


async def _undo_kaktus_usage(res, data: Doc) -> None:
    await kaktus_usage(res, data["kaktus_id"], -int(data["vcpus"]), -int(data["memory"]), -int(data["instances"]))


async def _undo_kompute(res, data: Doc) -> None:
    await delete_kompute(res, data["kompute_id"])


register_undo("kaktus.domain", _undo_domain)
register_undo("kaktus.usage", _undo_kaktus_usage)
register_undo("kompute.delete", _undo_kompute)
register_resume(DELETE_FLOW, _resume_delete)
