"""CachedStore.get_shared: the cached document itself, without a copy, for readers that never
mutate it (authentication, the route guard of a read). Those readers also remember what they
built from a document by its identity, so a write, an expiry or an eviction must replace the
object, and a read raced by a write must not be kept (tests/store/test_contract.py, with `get`)."""

from __future__ import annotations

import pytest

from kahuna.store.cache import CachedStore
from kahuna.store.errors import NotFound


async def test_one_object_until_a_write_replaces_it(cached: CachedStore):
    doc = await cached.insert("thing", {"n": 1, "tags": ["a"]})
    first = await cached.get_shared("thing", doc["_id"])  # a miss: read and cached
    assert first == doc
    assert await cached.get_shared("thing", doc["_id"]) is first
    copy = await cached.get("thing", doc["_id"])
    assert copy == first and copy is not first and copy["tags"] is not first["tags"]  # get still copies
    for write in ("update_fields", "replace"):
        if write == "update_fields":
            await cached.update_fields("thing", doc["_id"], {"n": 2})
        else:
            await cached.replace("thing", {"_id": doc["_id"], "n": 3, "tags": []})
        now = await cached.get_shared("thing", doc["_id"])
        assert now is not first and now["n"] == (2 if write == "update_fields" else 3)
        first = now
    await cached.delete("thing", doc["_id"])
    with pytest.raises(NotFound):
        await cached.get_shared("thing", doc["_id"])


async def test_expiry_and_eviction_replace_the_object(cached: CachedStore):
    now = [0.0]
    c = CachedStore(cached.inner, max_entries=2, ttl_seconds=5, clock=lambda: now[0])
    a, b, d = [await c.insert("thing", {"name": n}) for n in "abd"]
    first = await c.get_shared("thing", a["_id"])
    now[0] = 5.0  # expired
    second = await c.get_shared("thing", a["_id"])
    assert second == first and second is not first
    await c.get_shared("thing", b["_id"])
    await c.get_shared("thing", d["_id"])  # a is the least recently used: evicted
    assert await c.get_shared("thing", a["_id"]) is not second
    assert c.hits == 0 and c.misses == 5
