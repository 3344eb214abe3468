"""A Store wrapper that times every backend operation and tells listeners about each write.

Why here, right above the backend (below the cache): the latencies are the database's, not cache
hits; and a write seen here really reached the database (a fenced write of a passive node never
gets this far). Listeners get every successful write whatever path made it (the generic resource
service, `set_fields`, an orchestrator flow writing through `res.store`, an undo), which is what
keeps the `kowabunga_*` gauges current without ever scanning a collection.

`stats` (kahuna.observability.counters.StoreStats, a stdlib-only leaf) gets
`observe(operation, collection, seconds, error)` (`error`: the exception class name, or None).
Listeners get `written(collection, doc)` after an insert/replace/update (the document as it now
is) and `deleted(collection, doc_id)`; a listener that raises does not fail the write (the
database already has it).
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Protocol

from kahuna.logs import get_logger
from kahuna.observability.counters import StoreStats

from .base import Document, Filter, Index, Store

log = get_logger("kahuna.store")


class WriteListener(Protocol):
    def written(self, collection: str, doc: Document) -> None: ...

    def deleted(self, collection: str, doc_id: str) -> None: ...


class ObservedStore(Store):
    def __init__(self, inner: Store, stats: StoreStats | None = None) -> None:
        self.inner = inner
        self.stats = stats if stats is not None else StoreStats()
        self.listeners: list[WriteListener] = []

    async def _timed(self, op: str, collection: str, call, *args, **kwargs):
        started = time.perf_counter()
        try:
            result = await call(*args, **kwargs)
        except Exception as exc:
            self.stats.observe(op, collection, time.perf_counter() - started, type(exc).__name__)
            raise
        self.stats.observe(op, collection, time.perf_counter() - started, None)
        return result

    def _notify(self, collection: str, doc: Document | None, doc_id: str | None = None) -> None:
        for listener in self.listeners:
            try:
                if doc is None:
                    listener.deleted(collection, doc_id)
                else:
                    listener.written(collection, doc)
            except Exception:
                log.error("write listener failed", collection=collection, exc_info=True)

    # lifecycle

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def ensure_indexes(self, collection: str, indexes: Iterable[Index]) -> None:
        await self.inner.ensure_indexes(collection, indexes)

    # reads

    async def get(self, collection: str, doc_id: str) -> Document:
        return await self._timed("get", collection, self.inner.get, collection, doc_id)

    async def find(self, collection: str, filter: Filter | None = None, *, sort: str | None = None,
                   limit: int | None = None) -> list[Document]:
        return await self._timed("find", collection, self.inner.find, collection, filter, sort=sort, limit=limit)

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        return await self._timed("count", collection, self.inner.count, collection, filter)

    # writes

    async def insert(self, collection: str, doc: Document) -> Document:
        result = await self._timed("insert", collection, self.inner.insert, collection, doc)
        self._notify(collection, result)
        return result

    async def replace(self, collection: str, doc: Document) -> Document:
        result = await self._timed("replace", collection, self.inner.replace, collection, doc)
        self._notify(collection, result)
        return result

    async def update_fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> Document:
        result = await self._timed("update", collection, self.inner.update_fields, collection, doc_id, fields)
        self._notify(collection, result)
        return result

    async def update_fields_many(self, collection: str,
                                 changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Document]:
        result = await self._timed("update", collection, self.inner.update_fields_many, collection, changes)
        for doc in result.values():
            self._notify(collection, doc)
        return result

    async def delete(self, collection: str, doc_id: str) -> None:
        await self._timed("delete", collection, self.inner.delete, collection, doc_id)
        self._notify(collection, None, doc_id)


def find_observed(store: Store) -> ObservedStore | None:
    """The ObservedStore under wrappers that keep their inner store as `.inner` (cache, fence)."""
    seen = 0
    while store is not None and seen < 8:
        if isinstance(store, ObservedStore):
            return store
        store = getattr(store, "inner", None)
        seen += 1
    return None
