"""Kawaii (a project's internet gateway in a region) and its IPsec connections (collections
`kawaii`, `ipsec`).

kawaii: owned by the project, located in the region; one per project **per region** (upstream
allowed one per project: a quirk). `name` = "kawaii-<project name>" (the body's is ignored, as
upstream), `description`, `firewall`, `dnat_rules` (the API's `dnat`), `vpc_peerings`, and what
the create flow (kahuna.orchestrator.appliances) records: `public_subnet_id`, `private_subnet_id`,
`public_adapter_ids` {zone_id: adapter}, `public_vips`, `vrrp_ids` {zone_id: int}, `virtual_ips`,
`netip` (the API's), `appliances` [{zone_id, kaktus_id, kompute_id, instance_id, agent_id, name}],
`kompute_ids`. Update replaces description, firewall and DNAT (VPC peerings stay) and reloads the
appliances; delete is refused (409) while IPsec connections exist, then releases everything.

ipsec: child of its Kawaii (`kawaii_id`, plus `project_id`); `ip` = one of the Kawaii's public
VIPs, `xfrm_id` = the lowest free >= 1 in that Kawaii; 409 on the same name or the same remote
peer in a Kawaii. The pre-shared key is stored sealed only (`pre_shared_key_sealed`,
kahuna.resources.ipsec_psk) and answered in clear only to superAdmin and the project's admins
(kahuna.api.services masks it for others). Every create, update and delete reloads the appliances
(upstream forgot create and delete).

Field validation and upstream's defaults: kahuna.resources.appliance_fields.
"""

from __future__ import annotations

from typing import Any

from kahuna.orchestrator import appliances, kontroller
from kahuna.resources import appliance_fields as af
from kahuna.resources.errors import ConflictError, InsufficientResources, Invalid, NotFoundError
from kahuna.resources.instance import TENANT
from kahuna.resources.ipsec_psk import seal_psk
from kahuna.resources.kind import Hooks, Kind, Parent, register
from kahuna.resources.semantic import Unprocessable
from kahuna.resources.types import Field, ListOf, Obj, Str
from kahuna.resources.views import register_view

Doc = dict[str, Any]
XFRM_MAX = 255
NETIP_EMPTY = {"public": [], "private": [], "zones": []}


async def located_project(res, doc: Doc, what: str) -> Doc:
    """The owner project, which must be in the document's region (404 naming the region)."""
    project = await res.get("project", doc["project_id"])
    if doc["region_id"] not in (project.get("region_ids") or ()):
        raise NotFoundError(f"region {doc['region_id']} not found among project {project.get('name')}'s "
                            f"regions: no {what} there")
    return project


async def _peerings(res, peerings: list[Doc]) -> list[Doc]:
    out = []
    for i, peering in enumerate(peerings):
        try:
            subnet = await res.get("subnet", peering["subnet"])
        except NotFoundError:
            raise Invalid(f"vpc_peerings[{i}].subnet: subnet {peering['subnet']} not found") from None
        peering = {**peering, "netip": []}
        out.append(af.peering_with_ceph(peering) if subnet.get("application") == "ceph" else peering)
    return out


async def _kawaii_before_create(res, doc: Doc, **_: Any) -> None:
    project = await located_project(res, doc, "Kawaii")
    doc["name"] = f"kawaii-{project['name']}"
    if await res.count(KAWAII, project_id=doc["project_id"], region_id=doc["region_id"]):
        raise ConflictError(f"project {project['name']} already has a Kawaii in this region")
    doc["vpc_peerings"] = await _peerings(res, doc.get("vpc_peerings") or [])
    doc.update(public_subnet_id="", public_adapter_ids={}, public_vips=[], vrrp_ids={}, virtual_ips=[],
               netip=dict(NETIP_EMPTY), appliances=[], kompute_ids=[])


async def _kawaii_after_create(res, doc: Doc, **_: Any) -> None:
    await appliances.create_kawaii(res, doc)


async def _reload_kawaii(res, kawaii: Doc) -> None:
    await kontroller.reload(res, appliances.agent_ids(kawaii), what=f"kawaii {kawaii['_id']}")


async def _kawaii_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    await _reload_kawaii(res, new)


async def _kawaii_before_delete(res, doc: Doc, **_: Any) -> None:
    await appliances.delete_kawaii(res, doc)


KAWAII = register(Kind(
    name="kawaii",
    label="Kawaii",
    fields=(
        Field("id", Str(), read_only=True, db="_id"),
        Field("name", Str(), read_only=True),
        Field("description", Str(max_len=65536), default=""),
        Field("netip", Obj(fields=()), read_only=True),
        Field("firewall", af.FIREWALL, default=lambda: af.firewall(None)),
        Field("dnat", ListOf(item=af.DNAT_RULE, max_items=1024), default=list, db="dnat_rules"),
        # upstream: peerings cannot change after creation (the client's KawaiiUpdate has none)
        Field("vpc_peerings", ListOf(item=af.VPC_PEERING, max_items=16), default=list, create_only=True),
    ),
    owner=Parent("project", "project_id"),
    locations=(Parent("region", "region_id"),),
    unique=("region_id",),  # one per project per region, enforced by the store's unique index
    access=TENANT,
    routes=frozenset({"list", "create", "read", "update", "delete", "children"}),
    hooks=Hooks(before_create=_kawaii_before_create, after_create=_kawaii_after_create,
                after_update=_kawaii_after_update, before_delete=_kawaii_before_delete),
))


def _kawaii_view(doc: Doc, out: dict) -> dict:
    out["netip"] = doc.get("netip") or dict(NETIP_EMPTY)
    return out


register_view("kawaii", _kawaii_view)


# ----------------------------------------------------------------------------------------- IPsec


def _server_secret(res) -> str:
    secrets = res.extras.get("secrets")
    if secrets is None or not getattr(secrets, "server_secret", ""):
        raise Unprocessable("no server secret: IPsec pre-shared keys cannot be sealed")
    return secrets.server_secret


def _seal(res, doc: Doc) -> None:
    """The clear key never stays on the document: sealed under the connection's own id."""
    psk = doc.pop("pre_shared_key", None)
    if psk is not None:
        doc["pre_shared_key_sealed"] = seal_psk(_server_secret(res), doc["_id"], psk)


async def _same_peer(res, doc: Doc) -> None:
    for other in await res.list(IPSEC, kawaii_id=doc["kawaii_id"], remote_ip=doc["remote_ip"]):
        if other["_id"] != doc["_id"]:
            raise ConflictError(f"IPsec connection {other.get('name')} of this Kawaii already has "
                                f"remote peer {doc['remote_ip']}")


async def _ipsec_before_create(res, doc: Doc, **_: Any) -> None:
    kawaii = await res.get(KAWAII, doc["kawaii_id"])
    doc["project_id"] = kawaii["project_id"]
    await _same_peer(res, doc)
    publics = list(kawaii.get("public_vips") or ())
    if not publics:
        raise Unprocessable(f"Kawaii {kawaii.get('name')} has no public VIP yet")
    taken = {int(d.get("xfrm_id") or 0) for d in await res.list(IPSEC, kawaii_id=kawaii["_id"])}
    free = next((i for i in range(1, XFRM_MAX + 1) if i not in taken), None)
    if free is None:
        raise InsufficientResources(f"Kawaii {kawaii.get('name')} has {XFRM_MAX} IPsec connections: no XFRM id left")
    doc["xfrm_id"] = free
    doc["ip"] = publics[(free - 1) % len(publics)]  # connections spread over the zones' VIPs
    _seal(res, doc)


async def _ipsec_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("remote_ip") != old.get("remote_ip"):
        await _same_peer(res, new)
    _seal(res, new)


async def _ipsec_reload(res, doc: Doc, *args: Any, **_: Any) -> None:
    target = args[0] if args else doc  # after_update passes (old, new)
    try:
        kawaii = await res.get(KAWAII, target["kawaii_id"])
    except NotFoundError:
        return
    await _reload_kawaii(res, kawaii)


IPSEC = register(Kind(
    name="ipsec",
    label="IPsec connection",
    id_param="kawaiiIpSecId",
    fields=af.IPSEC_FIELDS,
    parent=Parent("kawaii", "kawaii_id"),
    unique=("name",),
    indexed=("project_id",),
    access=TENANT,
    routes=frozenset(),  # /kawaii/{kawaiiId}/ipsec[/{kawaiiIpSecId}]: kahuna.api.services
    serialize_writes=True,  # the XFRM id is the lowest free one of the Kawaii
    hooks=Hooks(before_create=_ipsec_before_create, after_create=_ipsec_reload,
                before_update=_ipsec_before_update, after_update=_ipsec_reload,
                after_delete=_ipsec_reload),
))
