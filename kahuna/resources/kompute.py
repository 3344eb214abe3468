"""Instances and Komputes (collections `instance`, `kompute`), owned by a project, in a zone.

A Kompute is upstream's "VM from zero": `POST /project/{p}/zone/{z}/kompute?poolId=&templateId=`
makes its OS volume (and data volume), cloud-init ISO, domain on a Kaktus chosen by placement,
and the instance document, as one durable flow (kahuna.orchestrator.komputes): a failure, a
vanished client or a crash leaves nothing. Deleting it removes all of that (domain first).

instance: `project_id`, `zone_id`, `region_id`, `kaktus_id`, `name`, `description`, `vcpus`,
`memory` (bytes), `volume_ids` (os first), `adapter_ids`, `local_ip`, `profile`, `profile_id`,
`metadata_generation` (int), `iso_volume` (the cloud-init image), `iso_digest`.
kompute: `project_id`, `zone_id`, `region_id`, `instance_id`, `name`, `description`, `vcpus`,
`memory`, `disk`, `data_disk`, `public`; the API's `ip` is the instance's `local_ip`.

The `instance` kind itself is declared in kahuna.resources.instance.
"""

from __future__ import annotations

from typing import Any

from kahuna.orchestrator.flows import Flow
from kahuna.orchestrator import instances
from kahuna.orchestrator.komputes import KomputeEffects, KomputeSpec, refresh_iso, spec_fields
from kahuna.resources.errors import ConflictError, Invalid, Missing
from kahuna.resources.instance import TENANT
from kahuna.resources.kind import Hooks, Kind, Parent, base_fields, register
from kahuna.resources.types import Bool, Field, Int, ListOf, Str

Doc = dict[str, Any]
_DELETING: dict[str, Flow] = {}  # kompute id -> its delete flow, between the two delete hooks


def _effects(res) -> KomputeEffects:
    return KomputeEffects(res.extras.get("hub"))


async def _before_create(res, doc: Doc, query: Any = None, spec: KomputeSpec | None = None, **_: Any) -> None:
    doc["instance_id"] = ""  # zone_id "" at region level: placement picks the zone
    raw = (query.get("public") if query is not None else None) or "false"
    doc["public"] = raw.lower() in ("true", "1")
    doc["pool_id"] = (query.get("poolId") if query is not None else None) or ""
    doc["template_id"] = (query.get("templateId") if query is not None else None) or ""
    doc.update(profile="", profile_id="", peering_subnet_ids=[], exclude_kaktus_ids=[])
    if spec is not None:  # kahuna.orchestrator.komputes.create_kompute (appliances)
        doc.update(spec_fields(spec))


async def _after_create(res, doc: Doc, **_: Any) -> None:
    await _effects(res).create(res, doc)


def _refuse_appliance(doc: Doc, principal: Any) -> None:
    """An appliance's Kompute (a Kawaii or Konvey instance) belongs to its service: through the
    API it is deleted with the service, never alone (its VIPs, VRRP ids and Kontroller agent
    would be left pointing at nothing). It may still be updated (grown, described: the ISO is
    re-rendered with a fresh Kontroller key). The service's own flows call in without a
    principal."""
    if principal is not None and doc.get("profile"):
        raise ConflictError(f"Kompute {doc.get('name')} is an appliance of {doc['profile'].capitalize()} "
                            f"{doc.get('profile_id')}: delete it through its {doc['profile']}")


async def _before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    """The name names the images and the domain: it stays. Disks only grow (422); a data disk
    is not added after creation (upstream never creates it later)."""
    if new["name"] != old["name"]:
        raise Invalid("name: a Kompute keeps its name (its volumes and domain are named after it)")
    if int(new["disk"]) < int(old["disk"]):
        raise Missing(f"disk: never shrinks ({new['disk']} < {old['disk']} bytes)")
    old_data, new_data = int(old.get("data_disk") or 0), int(new.get("data_disk") or 0)
    if new_data < old_data:
        raise Missing(f"data_disk: never shrinks ({new_data} < {old_data} bytes)")
    if new_data and not old_data:
        raise Missing("data_disk: a data disk cannot be added after creation")


async def _after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    """Disks grown, then the instance re-sized and re-described through its own durable flow;
    the ISO is refreshed by that flow, or here when only the disks changed."""
    instance = await _effects(res).grow_disks(res, old, new)
    resized = {**instance, "vcpus": int(new["vcpus"]), "memory": int(new["memory"]),
               "description": new.get("description", "")}
    if resized == instance:
        await refresh_iso(res, instance["_id"])
    else:
        await instances.update_owned(res, instance, resized)


async def _before_delete(res, doc: Doc, principal: Any = None, **_: Any) -> None:
    """Everything the Kompute holds goes (a forward flow); the flow ends with the document."""
    _refuse_appliance(doc, principal)
    _DELETING[doc["_id"]] = await _effects(res).delete(res, doc)


async def _after_delete(res, doc: Doc, **_: Any) -> None:
    flow = _DELETING.pop(doc["_id"], None)
    if flow is not None:
        await flow.finish()


KOMPUTE = register(Kind(
    name="kompute",
    fields=base_fields() + (
        Field("memory", Int(low=1), required=True),
        Field("vcpus", Int(low=1, high=1024), required=True),
        Field("disk", Int(low=1), required=True),
        Field("data_disk", Int(low=0), default=0),
        Field("ip", Str(), read_only=True),
        Field("uefi", Bool(), default=True, create_only=True),  # the 0.58 document's default
        Field("kmotion_enabled", Bool(), default=True),
        Field("kwarantines", ListOf(item=Str(max_len=64), max_items=64), default=list, db="kwarantine_ids"),
    ),
    owner=Parent("project", "project_id"),
    locations=(Parent("zone", "zone_id"), Parent("region", "region_id")),
    indexed=("instance_id",),
    access=TENANT,
    routes=frozenset({"list", "create", "read", "update", "delete", "children"}),
    hooks=Hooks(before_create=_before_create, after_create=_after_create, before_update=_before_update,
                after_update=_after_update, before_delete=_before_delete,
                after_delete=_after_delete),
))
