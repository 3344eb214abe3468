"""DNS records (collection `dns_record`): a region's A records under the region's domain, served
by the region's Kiwi agents, and a project's A records under the project's domain, served by the
Kiwi agents of the project's regions only (`create_project_record`, routes in kahuna.api.services).

Upstream schema v2: `region_id` (or `project_id` for a project's records), `domain` (the
parent's domain at creation, read-only on the API), `addresses`. Kiwi serves A records only, so
addresses are IPv4. Names are DNS names relative to the domain (`www`, `db.internal`), kept in
lower case as Kiwi's server answers them.

Every write is pushed to the region's Kiwi agents by the `dns` collaborator
(kahuna.orchestrator.dns) in `Resources.extras`; record writes run one at a time
(`serialize_writes`), and a Kiwi's full `Reload` takes the same lock, so a push and a reload
never interleave.
"""

from __future__ import annotations

import re
from typing import Any

import trio

from kahuna.resources.identity import ProjectStep, add_project_step
from kahuna.resources.errors import ConflictError, Invalid, Unavailable
from kahuna.resources.kind import Access, Hooks, Kind, Parent, register, set_doc_value
from kahuna.resources.service import utcnow
from kahuna.resources.types import IP, Field, ListOf, Name, Str, check_object
from kahuna.store import errors as store_errors
from kahuna.store.base import new_id

Doc = dict[str, Any]

_LABEL = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)$")


def dns_name(value: str, path: str) -> str:
    """A name relative to a domain: dot-separated labels (a leading `*` is a wildcard)."""
    name = value.lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels) or "*" in labels[1:]:
        raise Invalid(f"{path}: {value!r} is not a DNS name (letters, digits, '-' and '_' in "
                      f"dot-separated labels of at most 63 characters)")
    return name


def _ipv4(value: list[str], path: str) -> list[str]:
    if not value:
        raise Invalid(f"{path}: at least one IPv4 address is needed")
    for i, address in enumerate(value):
        if ":" in address:
            raise Invalid(f"{path}[{i}]: {address} is not an IPv4 address (Kiwi serves A records only)")
    return value


def _dns(res):
    dns = res.extras.get("dns")
    if dns is None:
        raise Unavailable("no eligible agent: this server runs without its agent hub")
    return dns


async def _record_before_create(res, doc: Doc, **_: Any) -> None:
    region = await res.get("region", doc["region_id"])
    if not region.get("domain"):
        raise Invalid(f"region {region.get('name')} has no domain to hold DNS records")
    doc["domain"] = region["domain"]
    _dns(res)


async def _record_after_create(res, doc: Doc, **_: Any) -> None:
    await _dns(res).record_created(res, doc)


async def _record_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if (old.get("name"), old.get("addresses")) != (new.get("name"), new.get("addresses")):
        await _dns(res).record_updated(res, old, new)


async def _record_before_delete(res, doc: Doc, **_: Any) -> None:
    await _dns(res).record_deleting(res, doc)


RECORD = register(Kind(
    name="record",
    collection="dns_record",
    label="DNS record",
    fields=(
        Field("id", Str(), read_only=True, db="_id"),
        Field("name", Name(max_len=253), required=True, validate=dns_name),
        Field("description", Str(max_len=65536), default=""),
        Field("domain", Str(), read_only=True),
        Field("addresses", ListOf(item=IP(), max_items=64), required=True, validate=_ipv4),
    ),
    parent=Parent("region", "region_id"),
    # unique per region for a region's records, per project for a project's (the other key is
    # absent, and both stores treat absent keys as equal)
    unique=("project_id", "name"),
    access=Access(),  # superAdmin only (a project's own records come with the project routes)
    serialize_writes=True,
    hooks=Hooks(before_create=_record_before_create, after_create=_record_after_create,
                after_update=_record_after_update, before_delete=_record_before_delete),
))


async def create_project_record(res, project: Doc, payload: Any) -> Doc:
    """A project's record: stored with `project_id` (no region), `domain` = the project's domain,
    pushed to the Kiwi agents of the project's regions; a failed push leaves nothing stored.

    Why not `Resources.create`: the kind's declared parent is the region, and a project record
    has none; this is the same sequence (validate, insert under the kind's write lock, side
    effect, undo) for the other owner."""
    if not isinstance(payload, dict):
        raise Invalid("request body must be a JSON object")
    if not project.get("domain"):
        raise Invalid(f"project {project.get('name')} has no domain to hold DNS records")
    dns = _dns(res)
    values = check_object(RECORD.fields, payload, "", partial=False)
    now = utcnow()
    doc: Doc = {"_id": new_id(), "schema_version": RECORD.schema_version, "created_at": now,
                "updated_at": now}
    for name, value in values.items():
        set_doc_value(doc, RECORD.field_map[name].doc_key, value)
    doc["project_id"], doc["domain"] = project["_id"], project["domain"]
    async with res.kind_lock(RECORD):
        try:
            await res.store.insert(RECORD.collection, doc)
        except store_errors.Conflict:
            raise ConflictError(f"DNS record {doc['name']} already exists in project "
                                f"{project.get('name')}") from None
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None
        try:
            await dns.record_created(res, doc)
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await res.store.delete(RECORD.collection, doc["_id"])
                except store_errors.StoreError:  # the push's error is the answer
                    pass
            raise
    return doc


async def project_records(res, project_id: str) -> list[Doc]:
    return await res.list(RECORD, project_id=project_id)


async def release_project_records(res, project: Doc) -> None:
    """When a project goes: its records go too, from the Kiwis first (best effort: an agent
    that fails catches up at its next reload, which no longer carries them)."""
    for doc in await project_records(res, project["_id"]):
        try:
            await res.delete(RECORD, doc["_id"])
        except Exception:
            await res.store.delete(RECORD.collection, doc["_id"])


async def _no_records_yet(res, doc: Doc, **_: Any) -> None:
    """A new project has no records."""


add_project_step(ProjectStep("dns_records", _no_records_yet, release_project_records))
