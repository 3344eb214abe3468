"""Generic operations on any declared kind: create, read, list, update, delete.

One implementation serves every kind. The rules a private cloud needs live here once:
- the parent must exist; names are unique within their parent (enforced by the store's unique
  index, so two concurrent creates cannot both win);
- a parent that still has children is not deleted (409 naming what is left), and a child cannot
  be created under a parent being deleted (both hold the parent's lock);
- hooks with side effects run after the write; when one fails, or the request is cancelled, the
  write is undone under a shield, so nothing is left half-created;
- a document that other kinds still reference (`Kind.references`) is not deleted either;
- a kind may have a default child per parent (`Kind.default_in`), kept on the parent document.
"""

from __future__ import annotations

import copy
from contextlib import asynccontextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import trio

from kahuna.logs import get_logger
from kahuna.resources.errors import ConflictError, Invalid, NotFoundError, Unavailable
from kahuna.resources.kind import (Kind, children_of, dependents_of, doc_value, get_kind, referrers_of,
                                   set_doc_value)
from kahuna.resources.types import check_object
from kahuna.store import errors as store_errors
from kahuna.store.base import Document, Store, is_valid_id, new_id

log = get_logger("kahuna.resources")


def utcnow() -> datetime:
    """Now, in UTC, at the millisecond precision both backends keep."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class KeyedLocks:
    """One trio.Lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Any, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Resources:
    """The domain facade the API (and the hub hooks) call. `extras` carries collaborators that
    hooks need (the hub, the mailer, ...) without this module importing them."""

    def __init__(self, store: Store, **extras: Any) -> None:
        self.store = store
        self.extras = extras
        self.locks = KeyedLocks()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["extras"][name]
        except KeyError:
            raise AttributeError(name) from None

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, kind: Kind | str, doc_id: str) -> Document:
        kind = _kind(kind)
        if not is_valid_id(doc_id):
            raise NotFoundError(f"{kind.label} {doc_id!r} not found")
        try:
            return await self.store.get(kind.collection, doc_id)
        except store_errors.NotFound:
            raise NotFoundError(f"{kind.label} {doc_id} not found") from None
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None

    async def list(self, kind: Kind | str, parent_id: str | None = None, **match: Any) -> list[Document]:
        kind = _kind(kind)
        query = dict(match)
        if parent_id is not None:
            assert kind.parent is not None, f"{kind.name} has no parent"
            await self.get(kind.parent.kind, parent_id)
            query[kind.parent.field] = parent_id
        return await self._store_call(self.store.find, kind.collection, query, sort="_id")

    async def count(self, kind: Kind | str, **match: Any) -> int:
        kind = _kind(kind)
        return await self._store_call(self.store.count, kind.collection, match)

    # -- writes --------------------------------------------------------------------------------

    async def create(self, kind: Kind | str, payload: Any, parent_id: str | None = None, *,
                     owner_id: str | None = None, location: tuple[str, str] | None = None,
                     **extra: Any) -> Document:
        """Validate `payload` (a decoded JSON body) and store a new document of `kind`.

        A tenant kind (`Kind.owner`) takes its owner's id and its `location` as (field, id),
        e.g. ("zone_id", z): both must exist; the owner's lock excludes its deletion meanwhile.
        The kind's other location fields come from the place given: a zone-level create is also
        in the zone's region (`region_id` from the zone), a region-level one has `zone_id` ""
        until its flow picks the zone."""
        kind = _kind(kind)
        values = check_object(kind.fields, _object(payload), "", partial=False)
        now = utcnow()
        doc: Document = {"_id": new_id(), "schema_version": kind.schema_version,
                         "created_at": now, "updated_at": now}
        for name, value in values.items():
            set_doc_value(doc, kind.field_map[name].doc_key, value)
        if kind.owner:
            parent_id = owner_id
        async with self._parent_lock(kind, parent_id):
            if kind.owner:
                await self.get(kind.owner.kind, owner_id)
                doc[kind.owner.field] = owner_id
                if location is not None:
                    link = next((l for l in kind.locations if l.field == location[0]), None)
                    if link is None:
                        raise Invalid(f"a {kind.label} cannot live in a {location[0][:-3]}")
                    place = await self.get(link.kind, location[1])
                    doc[link.field] = location[1]
                    for other in kind.locations:
                        if other.field != link.field:
                            doc[other.field] = place.get(other.field) or ""
            if kind.parent:
                await self.get(kind.parent.kind, parent_id)
                doc[kind.parent.field] = parent_id
            async with self.kind_lock(kind):
                if kind.hooks.before_create:
                    await kind.hooks.before_create(self, doc, **extra)
                await self._insert(kind, doc)
                if kind.hooks.after_create and not kind.owner:
                    await self._undo_on_failure(kind.hooks.after_create(self, doc, **extra),
                                                self.store.delete, kind.collection, doc["_id"])
            if kind.default_in and kind.parent:
                await self._default_if_none(kind, parent_id, doc["_id"])
        if kind.hooks.after_create and kind.owner:
            # tenant kinds: the owner's lock is not held across agent calls (parallel creates in a
            # project); the inserted document already keeps the owner from being deleted (409)
            await self._undo_on_failure(kind.hooks.after_create(self, doc, **extra),
                                        self.store.delete, kind.collection, doc["_id"])
        log.info("created", kind=kind.name, id=doc["_id"], name=doc.get("name"))
        return doc

    async def update(self, kind: Kind | str, doc_id: str, payload: Any, **extra: Any) -> Document:
        """Partial update: absent fields keep their value (every client *Update model is partial)."""
        kind = _kind(kind)
        values = check_object(kind.fields, _object(payload), "", partial=True)
        async with self.locks.hold((kind.name, doc_id)), self.kind_lock(kind):
            old = await self.get(kind, doc_id)
            new = _copy(old)
            for name, value in values.items():
                f = kind.field_map[name]
                if f.create_only:
                    continue
                if f.immutable and value != doc_value(old, f.doc_key):
                    raise Invalid(f"{name}: cannot be changed after creation")
                set_doc_value(new, f.doc_key, value)
            new["updated_at"] = utcnow()
            new["schema_version"] = kind.schema_version
            if kind.hooks.before_update:
                await kind.hooks.before_update(self, old, new, **extra)
            await self._replace(kind, new)
            if kind.hooks.after_update:
                await self._undo_on_failure(kind.hooks.after_update(self, old, new, **extra),
                                            self.store.replace, kind.collection, old)
        log.info("updated", kind=kind.name, id=doc_id, fields=sorted(values))
        return new

    async def set_fields(self, kind: Kind | str, doc_id: str, fields: dict[str, Any]) -> Document:
        """Server-side field changes (not from a client payload): no validation, no hooks."""
        kind = _kind(kind)
        fields = {**fields, "updated_at": utcnow()}
        try:
            return await self.store.update_fields(kind.collection, doc_id, fields)
        except store_errors.NotFound:
            raise NotFoundError(f"{kind.label} {doc_id} not found") from None
        except store_errors.Conflict as exc:
            raise ConflictError(f"{kind.label}: {exc.detail or exc.index}") from None

    async def delete(self, kind: Kind | str, doc_id: str, **extra: Any) -> None:
        kind = _kind(kind)
        async with self.locks.hold((kind.name, doc_id)), self.kind_lock(kind):
            doc = await self.get(kind, doc_id)
            left, users = [], []
            for child in children_of(kind):
                n = await self.count(child, **{child.parent.field: doc_id})
                if n:
                    left.append(_count_of(n, child.label))
            for referrer, ref_field in referrers_of(kind) + dependents_of(kind):
                n = await self.count(referrer, **{ref_field: doc_id})
                if n:
                    users.append(_count_of(n, referrer.label))
            if left or users:
                what = [f"still has {', '.join(left)}"] if left else []
                what += [f"is still used by {', '.join(users)}"] if users else []
                raise ConflictError(f"{kind.label} {doc.get('name', doc_id)} {' and '.join(what)}")
            if kind.hooks.before_delete:
                await kind.hooks.before_delete(self, doc, **extra)
            await self._store_call(self.store.delete, kind.collection, doc_id)
            if kind.hooks.after_delete:
                await kind.hooks.after_delete(self, doc, **extra)
        if kind.default_in and kind.parent and doc.get(kind.parent.field):
            await self._move_default(kind, doc[kind.parent.field], doc_id)
        log.info("deleted", kind=kind.name, id=doc_id)

    # -- default children ------------------------------------------------------------------------

    async def set_default(self, kind: Kind | str, parent_id: str, child_id: str) -> Document:
        """Make `child_id` its parent's default child of `kind` (PATCH .../{childId}/default).

        Under the parent's lock, like every create under that parent and the parent's own
        updates, so the default moves atomically and never to a child being deleted."""
        kind = _kind(kind)
        assert kind.default_in and kind.parent, f"{kind.name} has no default child"
        parent_kind = get_kind(kind.parent.kind)
        async with self.locks.hold((parent_kind.name, parent_id)):
            await self.get(parent_kind, parent_id)
            child = await self.get(kind, child_id)
            if child.get(kind.parent.field) != parent_id:
                raise NotFoundError(f"{kind.label} {child_id} not found in this {parent_kind.label}")
            parent = await self.set_fields(parent_kind, parent_id, {kind.default_in: child_id})
        log.info("default set", kind=kind.name, parent=parent_id, id=child_id)
        return parent

    async def default_child(self, kind: Kind | str, parent_id: str) -> str | None:
        """The id of the parent's default child of `kind`, if it has one."""
        kind = _kind(kind)
        parent = await self.get(kind.parent.kind, parent_id)
        return doc_value(parent, kind.default_in) or None

    async def _default_if_none(self, kind: Kind, parent_id: str, child_id: str) -> None:
        """The first child becomes the default (the caller holds the parent's lock)."""
        try:
            parent = await self.get(kind.parent.kind, parent_id)
            if not doc_value(parent, kind.default_in):
                await self.set_fields(kind.parent.kind, parent_id, {kind.default_in: child_id})
        except Exception:  # the child exists; a missing default is logged, never fatal
            log.error("could not set the default", kind=kind.name, parent=parent_id, exc_info=True)

    async def _move_default(self, kind: Kind, parent_id: str, child_id: str) -> None:
        """After a delete: when the deleted child was the default, the oldest sibling takes over."""
        try:
            async with self.locks.hold((kind.parent.kind, parent_id)):
                parent = await self.get(kind.parent.kind, parent_id)
                if doc_value(parent, kind.default_in) != child_id:
                    return
                siblings = await self.list(kind, parent_id)
                successor = siblings[0]["_id"] if siblings else ""
                await self.set_fields(kind.parent.kind, parent_id, {kind.default_in: successor})
        except NotFoundError:
            return  # the parent went meanwhile
        except Exception:
            log.error("could not move the default", kind=kind.name, parent=parent_id, exc_info=True)

    # -- helpers -------------------------------------------------------------------------------

    def kind_lock(self, kind: Kind | str):
        """Held around every write of a `serialize_writes` kind (a no-op for other kinds); also
        taken by side effects that must not interleave with those writes (a Kiwi's Reload)."""
        kind = _kind(kind)
        return self.locks.hold(("writes", kind.name)) if kind.serialize_writes else nullcontext()

    def _parent_lock(self, kind: Kind, parent_id: str | None):
        """Creating a child and deleting its parent exclude each other (same lock key)."""
        link = kind.parent or kind.owner
        if link is None:
            return nullcontext()
        return self.locks.hold((link.kind, parent_id))

    async def _insert(self, kind: Kind, doc: Document) -> None:
        try:
            await self.store.insert(kind.collection, doc)
        except store_errors.Conflict as exc:
            raise ConflictError(_conflict_reason(kind, doc, exc)) from None
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None

    async def _replace(self, kind: Kind, doc: Document) -> None:
        try:
            await self.store.replace(kind.collection, doc)
        except store_errors.Conflict as exc:
            raise ConflictError(_conflict_reason(kind, doc, exc)) from None
        except store_errors.NotFound:
            raise NotFoundError(f"{kind.label} {doc['_id']} not found") from None
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None

    async def _store_call(self, fn, *args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except store_errors.NotFound as exc:
            raise NotFoundError(str(exc)) from None
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None

    @staticmethod
    async def _undo_on_failure(hook_call, undo, *undo_args) -> None:
        """Await a side-effect hook; when it fails or is cancelled, undo the write, shielded."""
        try:
            await hook_call
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await undo(*undo_args)
                except Exception:
                    log.error("undo failed", exc_info=True)
            raise


def to_api(kind: Kind | str, doc: Document) -> dict[str, Any]:
    """The API view of a document: every served field, with the type's empty value when absent."""
    kind = _kind(kind)
    out = {}
    for f in kind.fields:
        if f.write_only:
            continue
        value = doc_value(doc, f.doc_key, None)
        out[f.name] = f.empty() if value is None else value
    return out


def _count_of(n: int, label: str) -> str:
    return f"{n} {label}{'' if n == 1 else 's'}"


def _kind(kind: Kind | str) -> Kind:
    return get_kind(kind) if isinstance(kind, str) else kind


def _object(payload: Any) -> dict:
    if not isinstance(payload, dict):
        raise Invalid("request body must be a JSON object")
    return payload


def _copy(doc: Document) -> Document:
    return copy.deepcopy(doc)


def _conflict_reason(kind: Kind, doc: Document, exc: store_errors.Conflict) -> str:
    if kind.parent and kind.parent.field in exc.index:
        parent = get_kind(kind.parent.kind)
        return f"a {kind.label} named {doc.get('name')!r} already exists in this {parent.label}"
    if "name" in exc.index:
        return f"a {kind.label} named {doc.get('name')!r} already exists"
    return f"{kind.label}: {exc.detail or 'a unique value is already taken'}"
