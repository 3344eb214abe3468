"""A Store wrapper through which every write of the daemon goes: the one place writes are fenced.

Resources (and so every service, flow, watcher and background task) is given this store, so no
other module needs to know about the pair. Reads pass through; each write first asks the node for
a write window (a local check of the lease, no round trip) and runs under a deadline that ends
before the lease does.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from kahuna.store.base import Document, Filter, Index, Store

from .node import Node


class FencedStore(Store):
    def __init__(self, inner: Store, node: Node) -> None:
        self.inner = inner
        self.node = node

    def __getattr__(self, name: str) -> Any:  # clear(), invalidate() of a CachedStore, ...
        return getattr(self.inner, name)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def ensure_indexes(self, collection: str, indexes: Iterable[Index]) -> None:
        with self.node.write_window():
            await self.inner.ensure_indexes(collection, indexes)

    async def get(self, collection: str, doc_id: str) -> Document:
        return await self.inner.get(collection, doc_id)

    async def find(self, collection: str, filter: Filter | None = None, *,
                   sort: str | None = None, limit: int | None = None) -> list[Document]:
        return await self.inner.find(collection, filter, sort=sort, limit=limit)

    async def find_one(self, collection: str, filter: Filter) -> Document | None:
        return await self.inner.find_one(collection, filter)

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        return await self.inner.count(collection, filter)

    async def insert(self, collection: str, doc: Document) -> Document:
        with self.node.write_window():
            return await self.inner.insert(collection, doc)

    async def replace(self, collection: str, doc: Document) -> Document:
        with self.node.write_window():
            return await self.inner.replace(collection, doc)

    async def update_fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> Document:
        with self.node.write_window():
            return await self.inner.update_fields(collection, doc_id, fields)

    async def delete(self, collection: str, doc_id: str) -> None:
        with self.node.write_window():
            await self.inner.delete(collection, doc_id)
