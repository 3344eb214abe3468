"""Virtual machine instances (collection `instance`), owned by a project, in a zone.

An instance is the domain on a Kaktus plus its volumes and adapters; a Kompute
(kahuna.resources.kompute) is upstream's "VM from zero" built on one. Document fields:
`project_id`, `zone_id`, `region_id`, `kaktus_id`, `name`, `description`, `vcpus`, `memory`
(bytes), `volume_ids` (os first), `adapter_ids` (public first), `local_ip`, `profile`,
`profile_id`, `metadata_generation` (int), `iso_volume` (the cloud-init image), `iso_digest`,
`kwarantine_ids`, `uefi`, `kmotion_enabled`.

`POST /project/{p}/zone/{z}/instance` and `/project/{p}/region/{r}/instance` (placement picks the
zone), `PUT /instance/{id}` and `DELETE /instance/{id}` run the flows of
kahuna.orchestrator.instances; the delete route is kahuna.api.compute's (it is a flow of its own,
with its own lock). Lists under a zone or a region list only the instances there.
"""

from __future__ import annotations

from typing import Any

from kahuna.orchestrator import instances
from kahuna.resources.kind import Access, Hooks, Kind, Parent, base_fields, register
from kahuna.resources.types import Bool, Field, Int, ListOf, Str

TENANT = Access(read="project", create="project", update="project", delete="project")
Doc = dict[str, Any]


async def _before_create(res, doc: Doc, **_: Any) -> None:
    await instances.before_create(res, doc)


async def _after_create(res, doc: Doc, **_: Any) -> None:
    await instances.create(res, doc)


async def _before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await instances.before_update(res, old, new)


async def _after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await instances.update(res, old, new)


INSTANCE = register(Kind(
    name="instance",
    fields=base_fields() + (
        Field("memory", Int(low=1), required=True),
        Field("vcpus", Int(low=1, high=1024), required=True),
        Field("adapters", ListOf(item=Str(max_len=64), max_items=16), default=list, db="adapter_ids"),
        Field("volumes", ListOf(item=Str(max_len=64), max_items=64), default=list, db="volume_ids"),
        Field("uefi", Bool(), default=True, create_only=True),  # the 0.58 document's default
        Field("kmotion_enabled", Bool(), default=True),
        Field("kwarantines", ListOf(item=Str(max_len=64), max_items=64), default=list, db="kwarantine_ids",
              create_only=True),
    ),
    owner=Parent("project", "project_id"),
    locations=(Parent("zone", "zone_id"), Parent("region", "region_id")),
    indexed=("kaktus_id",),
    access=TENANT,
    routes=frozenset({"list", "create", "read", "update", "children"}),
    hooks=Hooks(before_create=_before_create, after_create=_after_create, before_update=_before_update,
                after_update=_after_update),
))
