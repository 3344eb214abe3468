"""Project volumes (collection `volume`): owned by a project, located in a region, on a pool.

Document: `project_id`, `region_id`, `storage_pool_id`, `name`, `description`, `type` raw|os|iso|template,
`size` (bytes), `image` (the RBD image name, fixed at creation: a rename keeps it, unlike upstream
whose rename broke every later RPC), `template_id` (os volumes), `instance_id` ("" = free).

Through `POST /project/{p}/region/{r}/volume?poolId=&templateId=` only `raw` and `os` are created
(upstream read `iso` content from a local file named by the caller and downloaded `template`s from
any URL: both refused here, 422). Storage is checked against the project's quota and reserved
before the agent call (kahuna.resources.quota); the image is made by a durable flow
(kahuna.orchestrator.volumes) so that a failure, a vanished client or a crash leaves nothing.
A resize never shrinks (422); a grow is a durable flow run before the document is written (a crash
or an unknown agent answer is settled from the image's size: kahuna.orchestrator.volumes); a
volume attached to an instance is not deleted (409).
"""

from __future__ import annotations

from typing import Any

from kahuna.orchestrator.volumes import VolumeEffects  # also registers the volume undos
from kahuna.resources.errors import ConflictError, Invalid, Missing, NotFoundError
from kahuna.resources.kind import Access, Hooks, Kind, Parent, base_fields, doc_value, register
from kahuna.resources.types import Enum, Field, Int

Doc = dict[str, Any]
TENANT = Access(read="project", create="project", update="project", delete="project")
CREATABLE = ("raw", "os")


def _effects(res):
    return VolumeEffects(res.extras.get("hub"))


async def _pool_and_template(res, doc: Doc, query: Any) -> tuple[Doc, Doc | None]:
    pool_id = (query.get("poolId") if query is not None else None) or ""
    template_id = (query.get("templateId") if query is not None else None) or ""
    region = await res.get("region", doc["region_id"])
    return await pool_and_template(res, region, pool_id, template_id, with_template=doc["type"] == "os")


async def pool_and_template(res, region: Doc, pool_id: str, template_id: str, *,
                            with_template: bool = True) -> tuple[Doc, Doc | None]:
    """The storage pool (given, or the region's default) and, for an OS image, the template
    (given, or the pool's default OS template), each checked to belong where it is used: one
    rule for volumes and Kompute disks. Errors name the query parameter."""
    pool_id = pool_id or doc_value(region, "defaults.pool_id") or ""
    if not pool_id:
        raise Missing("poolId: the region has no default storage pool")
    try:
        pool = await res.get("pool", pool_id)
    except NotFoundError:
        raise Invalid(f"poolId: storage pool {pool_id} not found") from None
    if pool.get("region_id") != region["_id"]:
        raise Invalid(f"poolId: storage pool {pool_id} is not in this region")
    if not with_template:
        return pool, None
    template_id = template_id or doc_value(pool, "defaults.template_ids.os") or ""
    if not template_id:
        raise Missing("templateId: the storage pool has no default template")
    try:
        template = await res.get("template", template_id)
    except NotFoundError:
        raise Invalid(f"templateId: template {template_id} not found") from None
    if template.get("storage_pool_id") != pool["_id"]:
        raise Invalid(f"templateId: template {template_id} is not in storage pool {pool.get('name')}")
    return pool, template


async def image_name(res, pool_id: str, name: str, doc_id: str) -> str:
    """The RBD image: the volume's name, unless another volume of the pool already has it."""
    taken = await res.count("volume", storage_pool_id=pool_id, image=name)
    return name if not taken else f"{name}-{doc_id[-8:]}"


async def _before_create(res, doc: Doc, query: Any = None, **_: Any) -> None:
    if doc["type"] not in CREATABLE:
        raise Missing(f"type: {doc['type']} volumes are not created through this route (raw or os)")
    if "region_id" not in doc:
        raise Invalid("a volume lives in a region")
    pool, template = await _pool_and_template(res, doc, query)
    doc["storage_pool_id"] = pool["_id"]
    doc["template_id"] = template["_id"] if template else ""
    doc["instance_id"] = ""
    doc["image"] = await image_name(res, pool["_id"], doc["name"], doc["_id"])


async def _after_create(res, doc: Doc, **_: Any) -> None:
    await _effects(res).create(res, doc)


async def _before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if int(new["size"]) < int(old["size"]):
        raise Missing(f"size: a volume never shrinks ({new['size']} < {old['size']} bytes)")
    new["image"] = old.get("image") or old["name"]  # a rename keeps the image
    if int(new["size"]) > int(old["size"]):
        # before the document is written: the resize's flow stores the new size itself once the
        # image is grown (a crash before that leaves the old one), so check the rename first
        if new["name"] != old["name"] and await res.count("volume", project_id=old["project_id"], name=new["name"]):
            raise ConflictError(f"name: a volume named {new['name']} already exists in this project")
        await _effects(res).resize(res, new, int(new["size"]) - int(old["size"]))


async def _before_delete(res, doc: Doc, **_: Any) -> None:
    if doc.get("instance_id"):
        raise ConflictError(f"volume {doc['name']} is still used by instance {doc['instance_id']}")
    await _effects(res).delete_image(res, doc)


async def _after_delete(res, doc: Doc, **_: Any) -> None:
    from kahuna.resources import quota
    if doc.get("type") != "template":
        await quota.release(res, doc["project_id"], storage=int(doc.get("size", 0)))


VOLUME = register(Kind(
    name="volume",
    fields=base_fields() + (
        Field("type", Enum(choices=("os", "iso", "raw", "template")), required=True, create_only=True),
        Field("size", Int(low=1), required=True),
    ),
    owner=Parent("project", "project_id"),
    locations=(Parent("region", "region_id"),),
    indexed=("instance_id",),
    references=(Parent("pool", "storage_pool_id"), Parent("template", "template_id")),
    access=TENANT,
    routes=frozenset({"list", "create", "read", "update", "delete", "children"}),
    hooks=Hooks(before_create=_before_create, after_create=_after_create,
                before_update=_before_update,
                before_delete=_before_delete, after_delete=_after_delete),
))
