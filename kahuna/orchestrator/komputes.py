"""Kompute create and delete as durable flows (kahuna.orchestrator.flows).

Create, each step recorded (with its undo's data) before it runs: the Kompute document, the quota
(instances + 1, vCPUs, memory, storage = disk + data_disk), placement on a Kaktus of the zone
(kahuna.orchestrator.placement), the OS volume `<name>-os` cloned from the template and the data
volume `<name>-data` (kahuna.orchestrator.volumes), the instance document, the cloud-init ISO
`<name>-cloudinit` (kahuna.cloudinit, `CreateIsoVolume`, base64), the domain (`CreateInstance`
with kahuna.orchestrator.virtxml's XML), then start. Any failure undoes in reverse; the agent's
error (502/503/504) or the quota's 507 reaches the client.
Delete: domain (`DeleteInstance`, a domain already gone counts), ISO, volumes, documents, usage.
Not landed yet: network adapters (private/public), DNS records, region-level placement.
"""

from __future__ import annotations

import base64
from typing import Any

from kahuna import cloudinit
from kahuna.logs import get_logger
from kahuna.metadata.token import instance_token
from kahuna.orchestrator import placement, virtxml
from kahuna.orchestrator.agent_calls import AgentCalls
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.orchestrator.volumes import VolumeEffects, delete_image
from kahuna.resources import quota
from kahuna.resources.errors import DomainError, NotFoundError
from kahuna.resources.service import utcnow
from kahuna.resources.volume import pool_and_template
from kahuna.store import errors as store_errors
from kahuna.store.base import new_id

log = get_logger("kahuna.komputes")

Doc = dict[str, Any]
START = 1  # InstanceOperation actions (upstream-kahuna §3.4)


class KomputeEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)
        self.volumes = VolumeEffects(hub)

    # ---------------------------------------------------------------------------- create

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
        vcpus, memory = int(kompute["vcpus"]), int(kompute["memory"])
        disk, data_disk = int(kompute["disk"]), int(kompute.get("data_disk") or 0)
        delta = {"instances": 1, "vcpus": vcpus, "memory": memory}
        await quota.reserve(res, project["_id"], **delta)
        await flow.record("quota", undo="project.usage", data={"project_id": project["_id"], "delta": delta})
        kaktus = await self.place(res, kompute, zones, scope=f"region {region.get('name')}"
                                  if not kompute.get("zone_id") else "")
        zone = next(z for z in zones if z["_id"] == kaktus["zone_id"])
        if kompute.get("zone_id") != zone["_id"]:
            kompute["zone_id"] = zone["_id"]
            await res.store.update_fields("kompute", kompute["_id"], {"zone_id": zone["_id"]})
        name = kompute["name"]
        volumes = [self._volume_doc(kompute, pool, f"{name}-os", "os", disk, template["_id"])]
        if data_disk:
            volumes.append(self._volume_doc(kompute, pool, f"{name}-data", "raw", data_disk, ""))
        instance_id = new_id()
        for vol in volumes:
            vol["instance_id"] = instance_id
            await res.store.insert("volume", vol)
            await self.volumes.create_in(res, vol, flow)  # records document, storage quota, image
        now = utcnow()
        instance = {"_id": instance_id, "schema_version": 2, "created_at": now, "updated_at": now,
                    "project_id": project["_id"], "zone_id": zone["_id"], "region_id": region["_id"],
                    "kaktus_id": kaktus["_id"], "name": name, "description": kompute.get("description", ""),
                    "vcpus": vcpus, "memory": memory, "volume_ids": [v["_id"] for v in volumes],
                    "adapter_ids": [], "local_ip": "", "profile": "", "profile_id": "",
                    "metadata_generation": 0, "iso_volume": f"{name}-cloudinit", "iso_digest": "",
                    "cost": {"price": 0.0, "currency": "EUR"}}
        await res.store.insert("instance", instance)
        await flow.record("instance", undo="store.delete", data={"collection": "instance", "id": instance_id})
        files = self.cloudinit_files(res, project, region, zone, instance, template)
        iso = cloudinit.build_iso(files)
        instance["iso_digest"] = cloudinit.digest(files)
        await flow.step("iso", lambda: self.volumes.call(pool, "CreateIsoVolume", {
            "Pool": pool["libvirt_pool"], "Volume": instance["iso_volume"], "Size": len(iso),
            "Content": base64.b64encode(iso).decode()}),
            undo="volume.image", data={"pool_id": pool["_id"], "image": instance["iso_volume"]})
        xml = await self.domain_xml(kaktus, pool, instance, volumes, template)
        agent_id = self.calls.pick(kaktus.get("agent_ids") or (), "CreateInstance", f"Kaktus {kaktus['name']}")
        await flow.step("domain", lambda: self.calls.call(agent_id, "CreateInstance", {"Name": name, "XML": xml}),
                        undo="kaktus.domain", data={"kaktus_id": kaktus["_id"], "name": name})
        await self.calls.call(agent_id, "InstanceOperation", {"Name": name, "Action": START})
        await res.store.update_fields("instance", instance_id, {"iso_digest": instance["iso_digest"]})
        await res.store.update_fields("kompute", kompute["_id"], {"instance_id": instance_id, "ip": ""})
        kompute["instance_id"], kompute["ip"] = instance_id, ""
        await self._kaktus_usage(res, kaktus["_id"], vcpus, memory, 1)
        await join_kwarantines(res, kompute)
        log.info("kompute created", kompute=kompute["_id"], instance=instance_id, kaktus=kaktus["_id"])

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
                                             kwarantines=tuple(await kwarantines_of(res, kompute)))
        return by_id[placement.choose_host(request, candidates).id]

    def cloudinit_files(self, res, project: Doc, region: Doc, zone: Doc, instance: Doc, template: Doc) -> dict:
        config, secrets = res.extras.get("config"), res.extras.get("secrets")
        public_url = getattr(config, "public_url", "http://127.0.0.1:8080") if config else "http://127.0.0.1:8080"
        token = instance_token(secrets.server_secret, instance["_id"], instance["metadata_generation"]) if secrets else ""
        profile = cloudinit.CloudInitProfile(
            hostname=instance["name"], instance_id=instance["_id"], os=template.get("os", "linux"),
            domain=project.get("domain") or region.get("domain", ""), region=region.get("name", ""),
            zone=zone.get("name", ""), service_user=project.get("bootstrap_user") or "kowabunga",
            service_user_pubkey=project.get("bootstrap_pubkey", ""),
            metadata_url=public_url + "/latest/meta-data", metadata_token=token)
        return cloudinit.render(profile)

    async def domain_xml(self, kaktus: Doc, pool: Doc, instance: Doc, volumes: list[Doc], template: Doc) -> str:
        listen = "127.0.0.1"
        agents = kaktus.get("agent_ids") or ()
        if self.calls.eligible(agents, "GetLibvirtEndpoint"):
            try:
                _, ep = await self.calls.call_one(agents, "GetLibvirtEndpoint", {}, f"Kaktus {kaktus['name']}")
                listen = (ep or {}).get("Address") or listen
            except DomainError:
                pass
        monitors = ((pool.get("ceph_mon_address") or "localhost", int(pool.get("ceph_mon_port") or 3300)),)
        secret = pool.get("ceph_auth_secret_uuid", "")
        disks = [virtxml.DiskSpec(virtxml.disk_dev(i), pool["libvirt_pool"], v["image"], monitors, secret)
                 for i, v in enumerate(volumes)]
        disks.append(virtxml.DiskSpec(virtxml.ISO_DEVICE, pool["libvirt_pool"], instance["iso_volume"],
                                      monitors, secret, cdrom=True))
        return virtxml.domain_xml(virtxml.DomainSpec(
            name=instance["name"], vcpus=instance["vcpus"], memory=instance["memory"], spice_listen=listen,
            os=template.get("os", "linux"), description=instance.get("description", ""), disks=tuple(disks)))

    async def _kaktus_usage(self, res, kaktus_id: str, vcpus: int, memory: int, instances: int) -> None:
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

    # ---------------------------------------------------------------------------- update

    async def update(self, res, old: Doc, new: Doc) -> None:
        """Quota for the positive deltas first; volumes grown (`ResizeVolume`); on a CPU/RAM
        change the domain is re-defined (`UpdateInstance`) and rebooted only when running."""
        instance = await res.get("instance", new["instance_id"])
        dv, dm = int(new["vcpus"]) - int(old["vcpus"]), int(new["memory"]) - int(old["memory"])
        volumes = [await res.get("volume", v) for v in instance.get("volume_ids") or ()]
        wanted = [int(new["disk"])] + ([int(new["data_disk"])] if len(volumes) > 1 else [])
        grow = [(v, size - int(v["size"])) for v, size in zip(volumes, wanted) if size > int(v["size"])]
        delta = {"vcpus": dv, "memory": dm}
        await quota.reserve(res, new["project_id"], **delta)
        try:
            for vol, extra in grow:
                await self.volumes.resize(res, {**vol, "size": int(vol["size"]) + extra}, extra)
                await res.set_fields("volume", vol["_id"], {"size": int(vol["size"]) + extra})
        except BaseException:
            await quota.release(res, new["project_id"], **delta)
            raise
        if not (dv or dm or new.get("description") != old.get("description")):
            return
        kaktus = await res.get("kaktus", instance["kaktus_id"])
        pool = await res.get("pool", volumes[0]["storage_pool_id"])
        template = await res.get("template", volumes[0]["template_id"])
        instance.update(vcpus=int(new["vcpus"]), memory=int(new["memory"]), description=new.get("description", ""))
        xml = await self.domain_xml(kaktus, pool, instance, [await res.get("volume", v["_id"]) for v in volumes],
                                    template)
        agents, what = kaktus.get("agent_ids") or (), f"Kaktus {kaktus['name']}"
        try:
            await self.calls.call_one(agents, "UpdateInstance", {"Name": instance["name"], "XML": xml}, what)
            await res.set_fields("instance", instance["_id"], {"vcpus": instance["vcpus"],
                                                              "memory": instance["memory"],
                                                              "description": instance["description"]})
        except BaseException:
            await quota.release(res, new["project_id"], **delta)
            raise
        await self._kaktus_usage(res, kaktus["_id"], dv, dm, 0)
        if dv or dm:
            _, state = await self.calls.call_one(agents, "GetInstanceState", {"Name": instance["name"]}, what)
            if (state or {}).get("State") == "Running":
                await self.calls.call_one(agents, "InstanceOperation", {"Name": instance["name"], "Action": 2}, what)

    # ---------------------------------------------------------------------------- delete

    async def delete(self, res, kompute: Doc) -> None:
        """Domain, ISO, volumes, instance; each agent step must succeed before documents go."""
        if not kompute.get("instance_id"):
            return
        try:
            instance = await res.get("instance", kompute["instance_id"])
        except NotFoundError:
            return
        await delete_domain(self.calls, res, instance["kaktus_id"], instance["name"])
        volumes = []
        for vid in instance.get("volume_ids") or ():
            try:
                volumes.append(await res.get("volume", vid))
            except NotFoundError:
                pass
        pool = await res.get("pool", volumes[0]["storage_pool_id"]) if volumes else None
        if pool is not None:
            await delete_image(self.volumes, pool, instance.get("iso_volume") or f"{instance['name']}-cloudinit")
        for vol in volumes:
            await self.volumes.delete_image(res, vol)
            await _drop(res, "volume", vol["_id"])
            await quota.release(res, vol["project_id"], storage=int(vol["size"]))
        await _drop(res, "instance", instance["_id"])
        for kid in kompute.get("kwarantine_ids") or ():
            await set_membership(res, kid, "kompute_ids", kompute["_id"], False)
        await quota.release(res, kompute["project_id"], instances=1, vcpus=int(instance["vcpus"]),
                            memory=int(instance["memory"]))
        await self._kaktus_usage(res, instance["kaktus_id"], -int(instance["vcpus"]), -int(instance["memory"]), -1)


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


async def _drop(res, collection: str, doc_id: str) -> None:
    try:
        await res.store.delete(collection, doc_id)
    except store_errors.NotFound:
        pass


async def _undo_domain(res, data: Doc) -> None:
    await delete_domain(AgentCalls(res.extras.get("hub")), res, data["kaktus_id"], data["name"])


register_undo("kaktus.domain", _undo_domain)
