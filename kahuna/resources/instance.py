"""Virtual machine instances (collection `instance`), owned by a project, in a zone.

An instance is the domain on a Kaktus plus its volumes and adapters; a Kompute
(kahuna.resources.kompute) is upstream's "VM from zero" built on one. Document fields:
`project_id`, `zone_id`, `region_id`, `kaktus_id`, `name`, `description`, `vcpus`, `memory`
(bytes), `volume_ids` (os first), `adapter_ids`, `local_ip`, `profile`, `profile_id`,
`metadata_generation` (int), `iso_volume` (the cloud-init image), `iso_digest`.

Served read-only for now (GET /instance, /instance/{id}).
"""

from __future__ import annotations

from kahuna.resources.kind import Access, Kind, Parent, base_fields, register
from kahuna.resources.types import Bool, Field, Int, ListOf, Str

TENANT = Access(read="project", create="project", update="project", delete="project")

INSTANCE = register(Kind(
    name="instance",
    fields=base_fields() + (
        Field("memory", Int(low=1), required=True),
        Field("vcpus", Int(low=1, high=1024), required=True),
        Field("uefi", Bool(), default=False, create_only=True),
        Field("kmotion_enabled", Bool(), default=True),
        Field("kwarantines", ListOf(item=Str(max_len=64), max_items=64), default=list, db="kwarantine_ids"),
    ),
    owner=Parent("project", "project_id"),
    locations=(Parent("zone", "zone_id"),),
    indexed=("kaktus_id",),
    access=TENANT,
    routes=frozenset({"list", "read", "children"}),
))
