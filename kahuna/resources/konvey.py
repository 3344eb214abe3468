"""Konvey: a project's L4 load balancer (collection `konvey`), owned by the project, located in a
zone (`POST /project/{p}/zone/{z}/konvey`: upstream's route always answered 409, ours works) or
in a region (`zone_id` "", placement picks).

Document: `project_id`, `region_id`, `zone_id`, `name` (the API's; upstream stored a "konvey-"
prefix), `description`, `failover` (true when it has more than one appliance), `endpoints`
[{name, port, protocol, backends {hosts, port}}], and what the create flow
(kahuna.orchestrator.appliances) records: `subnet_id` (the project's private subnet),
`private_adapter_id`, `vip`, `vrrp_id`, `mask`, `appliances` [{zone_id, kaktus_id, kompute_id,
instance_id, agent_id, name}], `kompute_ids`. `failover` (the 0.58 client's default: true) asks
for two appliances on two hosts. Update replaces endpoints and description (upstream ignored the
description) and reloads the appliances; the name stays (it names the appliances).
"""

from __future__ import annotations

from typing import Any

from kahuna.orchestrator import appliances, kontroller
from kahuna.resources import appliance_fields as af
from kahuna.resources.instance import TENANT
from kahuna.resources.kawaii import located_project
from kahuna.resources.kind import Hooks, Kind, Parent, register
from kahuna.resources.types import Field, Name, Str

Doc = dict[str, Any]


async def _before_create(res, doc: Doc, **_: Any) -> None:
    project = await located_project(res, doc, "Konvey")
    doc.setdefault("name", project["name"])
    doc.update(subnet_id="", private_adapter_id="", vip="", vrrp_id=0, appliances=[], kompute_ids=[])


async def _after_create(res, doc: Doc, **_: Any) -> None:
    await appliances.create_konvey(res, doc)


async def _after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await kontroller.reload(res, appliances.agent_ids(new), what=f"konvey {new['_id']}")


async def _before_delete(res, doc: Doc, **_: Any) -> None:
    await appliances.delete_konvey(res, doc)


KONVEY = register(Kind(
    name="konvey",
    label="Konvey",
    fields=(
        Field("id", Str(), read_only=True, db="_id"),
        Field("name", Name(max_len=48), immutable=True),
        Field("description", Str(max_len=65536), default=""),
        Field("vip", Str(), read_only=True),
        af.FAILOVER,
        Field("endpoints", af.ENDPOINTS, required=True, validate=af.endpoints),
    ),
    owner=Parent("project", "project_id"),
    locations=(Parent("zone", "zone_id"), Parent("region", "region_id")),
    access=TENANT,
    routes=frozenset({"list", "create", "read", "update", "delete", "children"}),
    hooks=Hooks(before_create=_before_create, after_create=_after_create, after_update=_after_update,
                before_delete=_before_delete),
))
