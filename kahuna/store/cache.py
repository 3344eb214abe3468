"""A read-through cache by id in front of any Store.

Why: the API and the hub read the same few documents by id over and over (the caller's user, the
agent's record, a project); a round trip per read would dominate. Why it is safe:
- every write path invalidates the id it touches — delete included (upstream forgot delete and
  served deleted documents until the TTL ran out);
- a `get` that was already reading the database when a write to the same id happened does not
  store what it read (it may be the old version): reads in flight are marked stale by the write;
- entries are deep-copied in and out, so a caller mutating its result cannot corrupt the cache;
  `get_shared` is the one exception, for readers that never mutate (authentication, the route
  guard of a read): it answers the cached document itself, and the same object for as long as
  the entry lives, so such a reader can also tell "unchanged since I last looked" by identity
  (`is`): a write, an expiry or an eviction replaces the object;
- the cache is bounded (LRU) and entries expire after `ttl_seconds`, which also bounds how long
  a write made by *another* process (a second Kahuna node) can go unseen.
`find` and `count` pass through: query results are not cached.

All state is touched from the trio thread only, so no locks are needed.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping

from .base import Document, Filter, Index, Store

_Key = tuple[str, str]
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes, datetime})


def _copy(value: Any) -> Any:
    """A deep copy of a stored document: dicts and lists rebuilt, immutable scalars shared,
    anything else through copy.deepcopy. Why not deepcopy alone: it was ~9x slower on a user
    document, and every cached read pays it (bench/api.py: two per authenticated read)."""
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    if kind in _IMMUTABLE:
        return value
    return copy.deepcopy(value)


def _key(collection: str, doc_id: Any) -> _Key:
    # ObjectId hex is case-insensitive: one document, one entry, whatever case the caller used.
    return (collection, doc_id.lower() if isinstance(doc_id, str) else repr(doc_id))


class _Read:
    """A `get` in flight; a write to its id flips `stale` so its result is not cached."""

    __slots__ = ("stale",)

    def __init__(self) -> None:
        self.stale = False


class CachedStore(Store):
    def __init__(
        self,
        inner: Store,
        *,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_entries < 1 or ttl_seconds <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_seconds > 0")
        self.inner = inner
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[_Key, tuple[float, Document]] = OrderedDict()
        self._reads: dict[_Key, list[_Read]] = {}
        self.hits = 0
        self.misses = 0

    # cache bookkeeping

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, key: _Key) -> Document | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, doc = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return doc

    def _remember(self, key: _Key, doc: Document) -> None:
        self._entries[key] = (self._clock() + self.ttl_seconds, _copy(doc))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, collection: str, doc_id: Any) -> None:
        """Forget one id, and make reads of it already in flight not cache what they get."""
        key = _key(collection, doc_id)
        self._entries.pop(key, None)
        for read in self._reads.get(key, ()):
            read.stale = True

    def clear(self) -> None:
        self._entries.clear()
        for reads in self._reads.values():
            for read in reads:
                read.stale = True

    def sweep(self) -> int:
        """Drop expired entries (for a periodic background task); answers how many went."""
        now = self._clock()
        expired = [k for k, (expires, _) in self._entries.items() if expires <= now]
        for key in expired:
            del self._entries[key]
        return len(expired)

    # Store: lifecycle and pass-through

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        self.clear()
        await self.inner.close()

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def ensure_indexes(self, collection: str, indexes: Iterable[Index]) -> None:
        await self.inner.ensure_indexes(collection, indexes)

    async def find(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: str | None = None,
        limit: int | None = None,
    ) -> list[Document]:
        return await self.inner.find(collection, filter, sort=sort, limit=limit)

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        return await self.inner.count(collection, filter)

    # Store: the cached read

    async def get(self, collection: str, doc_id: str) -> Document:
        key = _key(collection, doc_id)
        cached = self._lookup(key)
        if cached is not None:
            self.hits += 1
            return _copy(cached)
        self.misses += 1
        read = _Read()
        self._reads.setdefault(key, []).append(read)
        try:
            doc = await self.inner.get(collection, doc_id)
        finally:
            reads = self._reads[key]
            reads.remove(read)
            if not reads:
                del self._reads[key]
        if not read.stale:
            self._remember(key, doc)
        return doc  # fresh from the backend: the cache kept its own copy

    async def get_shared(self, collection: str, doc_id: str) -> Document:
        """`get` without the copy, for a caller that never mutates the answer: the cached
        document itself (the same object on every hit until a write to that id, its expiry or
        its eviction replaces it). bench/api.py: an authenticated read made three copies."""
        key = _key(collection, doc_id)
        cached = self._lookup(key)
        if cached is not None:
            self.hits += 1
            return cached
        doc = await self.get(collection, doc_id)  # counts the miss, caches unless a write raced it
        cached = self._lookup(key)
        return doc if cached is None else cached  # uncached (a write raced the read): the caller's own

    # Store: writes, each invalidating its id whether it succeeded or not (a failed or cancelled
    # write may still have reached the database)

    async def insert(self, collection: str, doc: Document) -> Document:
        try:
            result = await self.inner.insert(collection, doc)
        finally:
            if doc.get("_id"):
                self.invalidate(collection, doc["_id"])
        self.invalidate(collection, result["_id"])
        return result

    async def replace(self, collection: str, doc: Document) -> Document:
        try:
            return await self.inner.replace(collection, doc)
        finally:
            self.invalidate(collection, doc.get("_id", ""))

    async def update_fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> Document:
        try:
            return await self.inner.update_fields(collection, doc_id, fields)
        finally:
            self.invalidate(collection, doc_id)

    async def update_fields_many(self, collection: str,
                                 changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Document]:
        try:
            return await self.inner.update_fields_many(collection, changes)
        finally:
            for doc_id in changes:
                self.invalidate(collection, doc_id)

    async def delete(self, collection: str, doc_id: str) -> None:
        try:
            await self.inner.delete(collection, doc_id)
        finally:
            self.invalidate(collection, doc_id)
