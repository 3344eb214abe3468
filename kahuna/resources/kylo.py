"""Kylo: a project's NFS share on the CephFS behind a region's NFS storage (collection `kylo`).

Document (upstream schema v2 plus the location): `project_id`, `region_id`, `nfs_id`, `name`,
`description`, `access_type` (RO|RW), `protocols` ([3, 4] subsets), `subvolume` {name, path,
size}, `export_id`, `clients` (CIDRs allowed to mount: the project's private subnet in that
region, and nothing else). The model's `endpoint` is the NFS storage's endpoint and `size` the
bytes used at creation (upstream never refreshes it).

Created by `create_kylo` (route POST /project/{p}/region/{r}/kylo?nfsId=, kahuna.api.services)
because its owner is the project while its parent is the NFS storage; read, updated and deleted
through the generic /kylo/{kyloId} routes (rules: members read, projectAdmins write). Agent work
is in kahuna.orchestrator.kylo.
"""

from __future__ import annotations

import re
from typing import Any

from kahuna.orchestrator.kylo import KyloEffects, Share, effects_of, new_export_id
from kahuna.resources.errors import ConflictError, Invalid, NotFoundError, Unavailable
from kahuna.resources.kind import Access, Hooks, Kind, Parent, register, set_doc_value
from kahuna.resources.semantic import Unprocessable
from kahuna.resources.service import utcnow
from kahuna.resources.types import Enum, Field, Int, ListOf, Name, Str, check_object
from kahuna.resources.views import register_view
from kahuna.store import errors as store_errors
from kahuna.store.base import new_id

Doc = dict[str, Any]
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _share_name(value: str, path: str) -> str:
    if not _HOSTNAME.match(value):
        raise Invalid(f"{path}: {value!r} must be a host name (lower-case letters, digits and '-', "
                      f"at most 63 characters): it names the CephFS subvolume and the export")
    return value


def _protocols(value: list[int], path: str) -> list[int]:
    for i, p in enumerate(value):
        if p not in (3, 4):
            raise Invalid(f"{path}[{i}]: NFS protocol must be 3 or 4, got {p}")
    return sorted(set(value))




def _effects(res) -> KyloEffects:
    return effects_of(res)


def _share(nfs: Doc, doc: Doc) -> Share:
    ganesha = nfs.get("ganesha") or {}
    sub = doc.get("subvolume") or {}
    return Share(name=sub.get("name") or doc["name"], fs=nfs.get("fs") or "nfs",
                 access=doc.get("access_type") or "RW", protocols=list(doc.get("protocols") or []),
                 clients=list(doc.get("clients") or []), backends=list(ganesha.get("backends") or []),
                 port=int(ganesha.get("port") or 54934), export_id=int(doc.get("export_id") or 0),
                 path=sub.get("path") or "", size=int(sub.get("size") or 0))


async def private_subnet_cidr(res, project: Doc, region: Doc) -> str:
    """The CIDR of the project's private subnet in the region (the only allowed clients)."""
    subnets = project.get("private_subnets") or {}
    subnet_id = None
    if isinstance(subnets, dict):
        subnet_id = subnets.get(region["_id"]) or subnets.get(region.get("name"))
    if subnet_id:
        try:
            return (await res.get("subnet", subnet_id))["cidr"]
        except NotFoundError:
            pass
    raise Unprocessable(f"project {project.get('name')} has no private subnet in region {region.get('name')}: "
                  f"nobody could mount the share")


async def create_kylo(res, project: Doc, region_id: str, nfs_id: str | None, payload: Any) -> Doc:
    if not isinstance(payload, dict):
        raise Invalid("request body must be a JSON object")
    values = check_object(KYLO.fields, payload, "", partial=False)
    if region_id not in (project.get("region_ids") or ()):
        raise NotFoundError(f"region {region_id} not found")
    region = await res.get("region", region_id)
    nfs_id = nfs_id or await res.default_child("nfs", region_id)
    if not nfs_id:
        raise Invalid(f"nfsId: region {region.get('name')} has no NFS storage")
    try:
        nfs = await res.get("nfs", nfs_id)
    except NotFoundError:
        raise Invalid(f"nfsId: NFS storage {nfs_id} not found") from None
    if nfs.get("region_id") != region_id:
        raise Invalid(f"nfsId: NFS storage {nfs.get('name')} is not in region {region.get('name')}")
    cidr = await private_subnet_cidr(res, project, region)
    effects = _effects(res)
    now = utcnow()
    doc: Doc = {"_id": new_id(), "schema_version": KYLO.schema_version, "created_at": now, "updated_at": now}
    for name, value in values.items():
        set_doc_value(doc, KYLO.field_map[name].doc_key, value)
    doc.update(project_id=project["_id"], region_id=region_id, nfs_id=nfs_id, clients=[cidr],
               endpoint=nfs.get("endpoint") or "")
    async with res.kind_lock(KYLO):
        if await res.count(KYLO, name=doc["name"]):
            raise ConflictError(f"a Kylo named {doc['name']} already exists")
        taken = {int(d.get("export_id") or 0) for d in await res.list(KYLO, nfs_id=nfs_id)}
        doc["export_id"] = new_export_id(taken)
        share = _share(nfs, doc)
        share.doc_id = doc["_id"]

        async def store(made: Share) -> None:
            doc["subvolume"] = {"name": made.name, "path": made.path, "size": made.size}
            try:
                await res.store.insert(KYLO.collection, doc)
            except store_errors.Conflict:
                raise ConflictError(f"a Kylo named {doc['name']} already exists") from None
            except store_errors.Unavailable as exc:
                raise Unavailable(f"database unavailable: {exc}") from None

        await effects.create(res, nfs, share, store)
    return doc


async def _after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    keys = ("name", "access_type", "protocols")
    if tuple(old.get(k) for k in keys) != tuple(new.get(k) for k in keys):
        nfs = await res.get("nfs", new["nfs_id"])
        share = _share(nfs, new)
        share.name = new["name"]  # the export's name follows the share's; the subvolume stays
        await _effects(res).update(res, nfs, share)


async def _before_delete(res, doc: Doc, **_: Any) -> None:
    nfs = await res.get("nfs", doc["nfs_id"])
    await _effects(res).delete(res, nfs, _share(nfs, doc))


KYLO = register(Kind(
    name="kylo",
    fields=(
        Field("id", Str(), read_only=True, db="_id"),
        Field("name", Name(max_len=63), required=True, validate=_share_name),
        Field("description", Str(max_len=65536), default=""),
        Field("access", Enum(choices=("RO", "RW")), default="RW", db="access_type"),
        Field("protocols", ListOf(item=Int(), max_items=2), default=lambda: [3, 4], validate=_protocols),
        Field("endpoint", Str(), read_only=True),
        Field("size", Int(), read_only=True, db="subvolume.size"),
    ),
    parent=Parent("nfs", "nfs_id"),
    unique=("name",),
    access=Access(read="project", create="projectAdmin", update="projectAdmin", delete="projectAdmin"),
    routes=frozenset({"list", "read", "update", "delete"}),
    indexed=("project_id",),
    # a project with shares is not deleted (409 naming them) rather than leaving exports behind
    references=(Parent("project", "project_id"),),
    label="Kylo",
    serialize_writes=True,
    hooks=Hooks(after_update=_after_update, before_delete=_before_delete),
))


def _view(doc: Doc, out: dict) -> dict:
    out["endpoint"] = doc.get("endpoint") or ""
    out["size"] = int((doc.get("subvolume") or {}).get("size") or 0)
    return out


register_view("kylo", _view)
