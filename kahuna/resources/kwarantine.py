"""Kwarantine groups (collection `kwarantine`): a project's anti-affinity groups.

Document: `project_id`, `name`, `description`, `policy` host|zone (default host), `instance_ids`,
`kompute_ids`. Placement (kahuna.orchestrator.komputes) excludes, for every other member of a
group the new VM joins, that member's Kaktus (`host`) or zone (`zone`). Membership routes live in
kahuna.api.compute; members must belong to the same project (else 404, like an unknown id).
"""

from __future__ import annotations

from kahuna.resources.kind import Access, Kind, Parent, base_fields, register
from kahuna.resources.types import Enum, Field, ListOf, Str

KWARANTINE = register(Kind(
    name="kwarantine",
    fields=base_fields() + (
        Field("policy", Enum(choices=("host", "zone")), default="host"),
        Field("instances", ListOf(item=Str()), read_only=True, db="instance_ids"),
        Field("komputes", ListOf(item=Str()), read_only=True, db="kompute_ids"),
    ),
    owner=Parent("project", "project_id"),
    access=Access(read="project", create="project", update="project", delete="project"),
))
