"""Storage: Ceph storage pools (region child), their OS image templates (pool child) and NFS
storages (region child, backed by a pool).

Upstream schema v2: collection `storage_pool` (`libvirt_pool`, `ceph_mon_address`,
`ceph_mon_port`, `ceph_auth_secret_uuid`, `cost`, `capacity`/`allocation`/`available` as the
agents last reported them, `defaults.template_ids.os`, `agent_ids`), `template`
(`storage_pool_id`, `os`, `source_url`) and `nfs` (`storage_pool_id`, `endpoint`, `fs`,
`ganesha.{backends,port}`). Defaults: a region's default pool (`defaults.pool_id`) and NFS
storage (`defaults.nfs_id`), a pool's default template (`defaults.template_ids.os`).

A template is an RBD image in its pool, downloaded and converted by one of the pool's Kaktus
agents (`CreateTemplateVolume`) when the template is created and removed (`DeleteVolume`) when
it is deleted. The image is named after the template at creation, as upstream does, and that
name is kept (`volume_name`) so a later rename does not lose it; its size, as the agent
reported it, is kept in `size`. The agent work is done by the `storage` collaborator
(kahuna.orchestrator.storage) found in `Resources.extras`.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from kahuna.resources.compute import COST, check_agent_ids, zero_cost
from kahuna.resources.errors import Invalid, NotFoundError, Unavailable
from kahuna.resources.kind import Access, Hooks, Kind, Parent, base_fields, register
from kahuna.resources.types import IP, Enum, Field, Int, ListOf, Name, Ref, Str

Doc = dict[str, Any]

# Pools, templates, NFS storages and networks are the catalogue users choose from when they
# create their resources: readable by anyone with a project in the region (policy `catalogue`).
CATALOGUE = Access(read="catalogue")


def _effects(res, name: str = "storage"):
    effects = res.extras.get(name)
    if effects is None:
        raise Unavailable("no eligible agent: this server runs without its agent hub")
    return effects


def _uuid(value: str, path: str) -> str:
    if value == "":
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Invalid(f"{path}: {value!r} is not a UUID") from None


def _http_url(value: str, path: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(f"{path}: {value!r} is not an http(s) URL")
    return value


def _hostname(value: str, path: str) -> str:
    labels = value.rstrip(".").split(".")
    if not all(label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
               and not label.startswith("-") and not label.endswith("-") for label in labels):
        raise Invalid(f"{path}: {value!r} is not a host name")
    return value


# --------------------------------------------------------------------------------- storage pool

async def _pool_before_create(res, doc: Doc, **_: Any) -> None:
    doc["agent_ids"] = await check_agent_ids(res, doc.get("agent_ids"), "Kaktus")
    if not doc["agent_ids"]:
        raise Invalid("agents: a storage pool needs at least one Kaktus agent")
    doc.update(capacity=0, allocation=0, available=0)


async def _pool_after_create(res, doc: Doc, **_: Any) -> None:
    storage = res.extras.get("storage")
    if storage is not None:
        await storage.refresh_pool_quietly(res, doc)


async def _pool_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("agent_ids") != old.get("agent_ids"):
        new["agent_ids"] = await check_agent_ids(res, new.get("agent_ids"), "Kaktus")
        if not new["agent_ids"]:
            raise Invalid("agents: a storage pool needs at least one Kaktus agent")


async def _pool_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    changed = any(new.get(k) != old.get(k) for k in ("agent_ids", "libvirt_pool"))
    storage = res.extras.get("storage")
    if changed and storage is not None:
        await storage.refresh_pool_quietly(res, new)


POOL = register(Kind(
    name="pool",
    collection="storage_pool",
    label="storage pool",
    fields=base_fields() + (
        Field("pool", Name(), required=True, db="libvirt_pool"),
        Field("ceph_address", Str(min_len=1, max_len=1024), default="localhost", db="ceph_mon_address"),
        Field("ceph_port", Int(low=1, high=65535), default=3300, db="ceph_mon_port"),
        Field("ceph_secret_uuid", Str(max_len=64), default="", db="ceph_auth_secret_uuid", validate=_uuid),
        Field("cost", COST, default=zero_cost),
        Field("agents", ListOf(item=Ref(kind="agent"), max_items=64), required=True, db="agent_ids"),
    ),
    parent=Parent("region", "region_id"),
    access=CATALOGUE,
    default_in="defaults.pool_id",
    hooks=Hooks(before_create=_pool_before_create, after_create=_pool_after_create,
                before_update=_pool_before_update, after_update=_pool_after_update),
))


# ------------------------------------------------------------------------------------- template

async def _template_before_create(res, doc: Doc, **_: Any) -> None:
    _effects(res)  # refused before anything is written when there is no hub at all
    doc["volume_name"] = doc["name"]
    doc["size"] = 0


async def _template_after_create(res, doc: Doc, **_: Any) -> None:
    """The image is created after the insert (so a duplicate name costs no download); when the
    agent fails, the service deletes the document again."""
    pool = await res.get(POOL, doc["storage_pool_id"])
    doc["size"] = await _effects(res).create_template_volume(res, pool, doc)


async def _template_before_delete(res, doc: Doc, **_: Any) -> None:
    """The image goes first: when the agent cannot delete it, the template stays."""
    try:
        pool = await res.get(POOL, doc["storage_pool_id"])
    except NotFoundError:
        return
    await _effects(res).delete_template_volume(res, pool, doc)


TEMPLATE = register(Kind(
    name="template",
    label="template",
    fields=base_fields() + (
        Field("os", Enum(choices=("linux", "windows")), default="linux", create_only=True),
        Field("source", Str(min_len=1, max_len=4096), required=True, create_only=True,
              db="source_url", validate=_http_url),
    ),
    parent=Parent("pool", "storage_pool_id"),
    access=CATALOGUE,
    default_in="defaults.template_ids.os",
    hooks=Hooks(before_create=_template_before_create, after_create=_template_after_create,
                before_delete=_template_before_delete),
))


def template_volume(doc: Doc) -> str:
    """The RBD image of a template (upstream documents have no `volume_name`: it is the name)."""
    return doc.get("volume_name") or doc["name"]


# ------------------------------------------------------------------------------------------ NFS

async def _nfs_before_create(res, doc: Doc, query: Any = None, **_: Any) -> None:
    """`?poolId=` names the backing pool; without it, the region's default pool."""
    region_id = doc["region_id"]
    pool_id = query.get("poolId") if query is not None else None
    if not pool_id:
        pool_id = await res.default_child(POOL, region_id)
        if not pool_id:
            raise Invalid("poolId: the region has no storage pool to back this NFS storage")
    try:
        pool = await res.get(POOL, pool_id)
    except NotFoundError:
        raise Invalid(f"poolId: storage pool {pool_id} not found") from None
    if pool.get("region_id") != region_id:
        raise Invalid(f"poolId: storage pool {pool.get('name', pool_id)} is not in this region")
    doc["storage_pool_id"] = pool_id


NFS = register(Kind(
    name="nfs",
    plural="nfses",
    label="NFS storage",
    fields=base_fields() + (
        Field("endpoint", Str(min_len=1, max_len=253), required=True, validate=_hostname),
        Field("fs", Name(), default="nfs"),
        Field("backends", ListOf(item=IP(), max_items=64), required=True, db="ganesha.backends"),
        Field("port", Int(low=1, high=65535), default=54934, db="ganesha.port"),
    ),
    parent=Parent("region", "region_id"),
    references=(Parent("pool", "storage_pool_id"),),
    access=CATALOGUE,
    default_in="defaults.nfs_id",
    hooks=Hooks(before_create=_nfs_before_create),
))
