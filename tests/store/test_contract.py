"""The store contract: what every backend (and the cache in front of it) must do the same way.

`store` runs each test against embedded, mongo (nx-27017 over TCP), and both behind CachedStore.
"""

from __future__ import annotations

import copy
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio

from kahuna.store.base import Index, Store, is_valid_id, new_id
from kahuna.store.cache import CachedStore
from kahuna.store.embedded import EmbeddedStore
from kahuna.store.errors import Conflict, NotFound, Unavailable
from kahuna.store.factory import build_store, open_store
from kahuna.store.mongo import MongoStore
from tests.nx_server import nx_server

SCOPED_NAME = Index("instance_name", ("parent_id", "name"), unique=True)
EMAIL = Index("user_email", ("email",), unique=True)
BY_PARENT = Index("instance_parent", ("parent_id",))


def is_utc(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == timedelta(0)


async def names(store: Store, filter=None, **kw) -> list[str]:
    """Names of the matching things, by name unless told (unsorted order is not in the contract)."""
    kw.setdefault("sort", "name")
    return [d["name"] for d in await store.find("thing", filter, **kw)]


# --- round trip ------------------------------------------------------------------------------

async def test_insert_get_round_trip(store: Store):
    when = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
    doc = {
        "name": "alpha",
        "nested": {"a": {"b": [1, "two", {"three": 3.5}]}, "empty": {}},
        "tags": ["x", "y"],
        "on": True,
        "off": False,
        "count": 42,
        "big": 2**53 + 1,
        "ratio": 0.25,
        "nothing": None,
        "when": when,
        "schema_version": 2,
    }
    original = copy.deepcopy(doc)
    inserted = await store.insert("thing", doc)
    assert doc == original, "insert must not mutate the caller's document"
    assert is_valid_id(inserted["_id"])
    got = await store.get("thing", inserted["_id"])
    assert got == {"_id": inserted["_id"], **original}
    assert inserted == got
    assert type(got["on"]) is bool and type(got["count"]) is int and type(got["ratio"]) is float
    assert is_utc(got["when"])


async def test_datetimes_come_back_aware_utc_to_the_millisecond(store: Store):
    paris = timezone(timedelta(hours=2))
    inserted = await store.insert(
        "thing",
        {
            "aware": datetime(2024, 1, 1, 12, 0, 0, 987654, tzinfo=paris),
            "naive": datetime(2024, 1, 1, 12, 0, 0),  # naive means UTC, as in pymongo
            "deep": {"list": [datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)]},
        },
    )
    got = await store.get("thing", inserted["_id"])
    assert got["aware"] == datetime(2024, 1, 1, 10, 0, 0, 987000, tzinfo=timezone.utc)
    assert got["naive"] == datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert got["deep"]["list"][0] == datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    for value in (got["aware"], got["naive"], got["deep"]["list"][0]):
        assert is_utc(value)
    assert inserted == got, "insert answers what get will answer"


async def test_ids_are_fresh_24_hex_and_explicit_ids_are_kept(store: Store):
    ids = {(await store.insert("thing", {"n": i}))["_id"] for i in range(5)}
    assert len(ids) == 5 and all(is_valid_id(i) and i == i.lower() for i in ids)
    mine = new_id()
    assert (await store.insert("thing", {"_id": mine, "n": 9}))["_id"] == mine
    assert (await store.get("thing", mine))["n"] == 9
    assert (await store.get("thing", mine.upper()))["n"] == 9, "ObjectId hex is case-insensitive"


async def test_duplicate_id_is_a_conflict(store: Store):
    mine = new_id()
    await store.insert("thing", {"_id": mine, "v": 1})
    with pytest.raises(Conflict) as info:
        await store.insert("thing", {"_id": mine, "v": 2})
    assert info.value.index == "_id_"
    assert (await store.get("thing", mine))["v"] == 1


@pytest.mark.parametrize("bad", ["nope", "", "z" * 24, "0" * 23, 42, None])
async def test_insert_with_malformed_id_is_refused(store: Store, bad):
    if not bad:  # falsy ids mean "give me one"
        assert is_valid_id((await store.insert("thing", {"_id": bad}))["_id"])
        return
    with pytest.raises(ValueError):
        await store.insert("thing", {"_id": bad})


@pytest.mark.parametrize("bad", ["nope", "", "z" * 24, "0" * 25, 7])
async def test_get_malformed_id_is_not_found(store: Store, bad):
    with pytest.raises(NotFound):
        await store.get("thing", bad)


async def test_get_unknown_id_is_not_found(store: Store):
    await store.insert("thing", {"n": 1})
    with pytest.raises(NotFound) as info:
        await store.get("thing", new_id())
    assert info.value.collection == "thing"


async def test_collections_are_separate(store: Store):
    doc = await store.insert("thing", {"n": 1})
    with pytest.raises(NotFound):
        await store.get("other", doc["_id"])
    assert await store.count("other") == 0


@pytest.mark.parametrize("bad", ["", "has space", "semi;colon", 'quo"te', "$cmd", "sqlite_master"])
async def test_invalid_collection_names_are_refused(store: Store, bad):
    with pytest.raises(ValueError):
        await store.insert(bad, {"n": 1})


# --- find / count ----------------------------------------------------------------------------

@pytest.fixture
async def things(store: Store) -> list[dict]:
    docs = [
        {"name": "a", "kind": "vm", "size": 3, "flag": True, "meta": {"zone": "z1", "rack": 1}, "opt": None},
        {"name": "b", "kind": "vm", "size": 1, "flag": False, "meta": {"zone": "z2", "rack": 2}},
        {"name": "c", "kind": "disk", "size": 2.0, "flag": 1, "meta": {"zone": "z1", "rack": 3}, "opt": "x"},
        {"name": "d", "kind": "disk", "size": "2", "flag": 0, "meta": {"zone": "z3"}, "opt": None},
        {"name": "e", "kind": "net", "size": 5, "flag": True, "meta": {"zone": "z1", "rack": "1"}},
    ]
    return [await store.insert("thing", d) for d in docs]


async def test_find_equality(store: Store, things):
    assert await names(store, {"kind": "vm"}) == ["a", "b"]
    assert await names(store, {"kind": "vm", "size": 1}) == ["b"]
    assert await names(store, {"kind": "nothing"}) == []
    assert len(await store.find("thing")) == len(await store.find("thing", {})) == 5


async def test_find_numbers_compare_like_mongo(store: Store, things):
    assert await names(store, {"size": 2}) == ["c"], "2 == 2.0, but never the string '2'"
    assert await names(store, {"size": 2.0}) == ["c"]
    assert await names(store, {"size": "2"}) == ["d"]


async def test_find_booleans_are_not_integers(store: Store, things):
    assert await names(store, {"flag": True}) == ["a", "e"]
    assert await names(store, {"flag": False}) == ["b"]
    assert await names(store, {"flag": 1}) == ["c"]
    assert await names(store, {"flag": 0}) == ["d"]
    assert await store.count("thing", {"flag": True}) == 2
    assert await names(store, {"flag": {"$in": [True, 0]}}) == ["a", "d", "e"]


async def test_find_none_matches_null_and_missing(store: Store, things):
    assert await names(store, {"opt": None}) == ["a", "b", "d", "e"]
    assert await store.count("thing", {"opt": None}) == 4
    assert await names(store, {"opt": None, "kind": "disk"}) == ["d"]
    assert await names(store, {"meta.rack": None}) == ["d"]
    assert await names(store, {"opt": {"$in": ["x", None]}}) == ["a", "b", "c", "d", "e"]


async def test_find_dotted_paths_reach_into_sub_documents(store: Store, things):
    assert await names(store, {"meta.zone": "z1"}) == ["a", "c", "e"]
    assert await names(store, {"meta.zone": "z1", "meta.rack": 1}) == ["a"]
    assert await names(store, {"meta.rack": "1"}) == ["e"]
    assert await names(store, {"meta": "z1"}) == [], "a string never equals a sub-document"


async def test_find_in(store: Store, things):
    assert await names(store, {"kind": {"$in": ["vm", "net"]}}) == ["a", "b", "e"]
    assert await names(store, {"kind": {"$in": []}}) == []
    assert await names(store, {"size": {"$in": [1, 5, "2"]}}) == ["b", "d", "e"]
    assert await store.count("thing", {"kind": {"$in": ["vm", "disk"]}, "meta.zone": "z1"}) == 2


async def test_find_in_on_ids(store: Store, things):
    wanted = [things[1]["_id"], things[3]["_id"], new_id(), "not-an-id"]
    assert await names(store, {"_id": {"$in": wanted}}) == ["b", "d"]
    assert await names(store, {"_id": things[4]["_id"]}) == ["e"]
    assert await names(store, {"_id": "not-an-id"}) == []


async def test_find_sort_and_limit(store: Store, things):
    assert await names(store, {"kind": {"$in": ["vm", "disk"]}}, sort="name") == ["a", "b", "c", "d"]
    assert await names(store, sort="-name") == ["e", "d", "c", "b", "a"]
    assert await names(store, sort="-name", limit=2) == ["e", "d"]
    assert await names(store, {"kind": "disk"}, sort="name", limit=1) == ["c"]
    assert await names(store, sort="meta.rack", limit=1) == ["d"], "missing sorts first"
    assert await names(store, {"size": {"$in": [1, 2, 3, 5]}}, sort="-size") == ["e", "a", "c", "b"]
    assert await names(store, sort="_id") == ["a", "b", "c", "d", "e"]
    assert await names(store, sort="-_id", limit=1) == ["e"]
    assert (await store.find_one("thing", {"kind": "net"}))["name"] == "e"
    assert await store.find_one("thing", {"kind": "nope"}) is None


async def test_sort_orders_types_like_mongo(store: Store, things):
    assert await names(store, sort="size") == ["b", "c", "a", "e", "d"], "numbers before strings"
    assert await names(store, sort="-size") == ["d", "e", "a", "c", "b"]


async def test_sort_by_datetime(store: Store):
    base = datetime(2024, 3, 1, tzinfo=timezone.utc)
    for name, days in (("mid", 5), ("old", -400), ("new", 30), ("none", None)):
        await store.insert("thing", {"name": name, "at": None if days is None else base + timedelta(days=days)})
    assert await names(store, sort="at") == ["none", "old", "mid", "new"]
    assert await names(store, sort="-at", limit=2) == ["new", "mid"]


async def test_sort_ties_are_broken_by_id(store: Store, things):
    assert await names(store, sort="kind") == ["c", "d", "e", "a", "b"]
    assert await names(store, sort="-kind") == ["a", "b", "e", "c", "d"]


async def test_count(store: Store, things):
    assert await store.count("thing") == 5
    assert await store.count("thing", {"kind": "disk"}) == 2
    assert await store.count("thing", {"meta.zone": "z1", "flag": True}) == 2
    assert await store.count("empty") == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"size": {"$gt": 1}},
        {"$or": [{"a": 1}]},
        {"size": [1, 2]},
        {"size": {"a": 1}},
        {"size": {"$in": "abc"}},
        {"size": {"$in": [[1]]}},
        {"when": datetime(2024, 1, 1, tzinfo=timezone.utc)},
        {"bad key": 1},
    ],
)
async def test_unsupported_filters_raise_value_error(store: Store, things, bad):
    with pytest.raises(ValueError):
        await store.find("thing", bad)
    with pytest.raises(ValueError):
        await store.count("thing", bad)


@pytest.mark.parametrize("kw", [{"sort": "bad field"}, {"limit": 0}, {"limit": -1}, {"sort": "-"}])
async def test_bad_sort_or_limit_raise_value_error(store: Store, kw):
    with pytest.raises(ValueError):
        await store.find("thing", **kw)


# --- replace / update_fields / delete --------------------------------------------------------

async def test_replace_swaps_the_whole_document(store: Store):
    doc = await store.insert("thing", {"name": "a", "old": 1, "meta": {"x": 1}})
    out = await store.replace("thing", {"_id": doc["_id"], "name": "a2", "meta": {"y": 2}})
    assert out == {"_id": doc["_id"], "name": "a2", "meta": {"y": 2}}
    assert await store.get("thing", doc["_id"]) == out


async def test_replace_unknown_or_malformed_is_not_found(store: Store):
    with pytest.raises(NotFound):
        await store.replace("thing", {"_id": new_id(), "name": "ghost"})
    with pytest.raises(NotFound):
        await store.replace("thing", {"_id": "nope", "name": "ghost"})
    with pytest.raises(ValueError):
        await store.replace("thing", {"name": "no id"})
    assert await store.count("thing") == 0, "replace never inserts"


async def test_update_fields_sets_top_level_and_dotted(store: Store):
    when = datetime(2025, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    doc = await store.insert("thing", {"name": "a", "keep": [1, 2], "meta": {"zone": "z1", "rack": 1}})
    out = await store.update_fields(
        "thing", doc["_id"], {"name": "b", "meta.rack": 7, "meta.new.deep": True, "when": when}
    )
    expected = {
        "_id": doc["_id"],
        "name": "b",
        "keep": [1, 2],
        "meta": {"zone": "z1", "rack": 7, "new": {"deep": True}},
        "when": when,
    }
    assert out == expected
    assert await store.get("thing", doc["_id"]) == expected
    assert is_utc(out["when"])
    assert await store.update_fields("thing", doc["_id"], {}) == expected


async def test_update_fields_not_found_and_refusals(store: Store):
    with pytest.raises(NotFound):
        await store.update_fields("thing", new_id(), {"name": "x"})
    with pytest.raises(NotFound):
        await store.update_fields("thing", "nope", {"name": "x"})
    doc = await store.insert("thing", {"name": "a"})
    for bad in ({"_id": new_id()}, {"a": 1, "a.b": 2}, {"$set": 1}):
        with pytest.raises(ValueError):
            await store.update_fields("thing", doc["_id"], bad)
    assert await store.get("thing", doc["_id"]) == doc
    assert await store.count("thing") == 1, "update_fields never upserts"


async def test_delete(store: Store):
    keep = await store.insert("thing", {"name": "keep"})
    gone = await store.insert("thing", {"name": "gone"})
    assert await store.delete("thing", gone["_id"]) is None
    with pytest.raises(NotFound):
        await store.get("thing", gone["_id"])
    with pytest.raises(NotFound):
        await store.delete("thing", gone["_id"])
    with pytest.raises(NotFound):
        await store.delete("thing", "nope")
    assert await store.get("thing", keep["_id"]) == keep
    assert await store.count("thing") == 1


# --- unique indexes --------------------------------------------------------------------------

@pytest.fixture
async def indexed(store: Store) -> Store:
    await store.ensure_indexes("thing", [SCOPED_NAME, BY_PARENT])
    await store.ensure_indexes("user", [EMAIL])
    return store


async def test_unique_name_within_parent_scope(indexed: Store):
    p1, p2 = new_id(), new_id()
    await indexed.insert("thing", {"parent_id": p1, "name": "web"})
    await indexed.insert("thing", {"parent_id": p2, "name": "web"})  # another parent: fine
    await indexed.insert("thing", {"parent_id": p1, "name": "db"})
    with pytest.raises(Conflict) as info:
        await indexed.insert("thing", {"parent_id": p1, "name": "web"})
    assert info.value.index == SCOPED_NAME.name
    assert info.value.collection == "thing"
    assert await indexed.count("thing", {"parent_id": p1}) == 2


async def test_unique_conflict_from_update_fields(indexed: Store):
    p = new_id()
    await indexed.insert("thing", {"parent_id": p, "name": "web"})
    db = await indexed.insert("thing", {"parent_id": p, "name": "db"})
    with pytest.raises(Conflict) as info:
        await indexed.update_fields("thing", db["_id"], {"name": "web"})
    assert info.value.index == SCOPED_NAME.name
    with pytest.raises(Conflict):  # bool and datetime values take another path on nx-27017
        await indexed.update_fields("thing", db["_id"], {"name": "web", "on": True, "at": datetime.now(timezone.utc)})
    assert await indexed.get("thing", db["_id"]) == db, "the failed writes left no trace"
    moved = await indexed.update_fields("thing", db["_id"], {"parent_id": new_id(), "name": "web"})
    assert moved["name"] == "web"


async def test_unique_conflict_from_replace(indexed: Store):
    p = new_id()
    await indexed.insert("thing", {"parent_id": p, "name": "web"})
    db = await indexed.insert("thing", {"parent_id": p, "name": "db", "x": 1})
    with pytest.raises(Conflict) as info:
        await indexed.replace("thing", {"_id": db["_id"], "parent_id": p, "name": "web"})
    assert info.value.index == SCOPED_NAME.name
    assert await indexed.get("thing", db["_id"]) == db


async def test_unique_single_field(indexed: Store):
    user = await indexed.insert("user", {"email": "a@example.org"})
    await indexed.insert("user", {"email": "b@example.org"})
    with pytest.raises(Conflict) as info:
        await indexed.insert("user", {"email": "a@example.org"})
    assert info.value.index == EMAIL.name
    await indexed.delete("user", user["_id"])
    await indexed.insert("user", {"email": "a@example.org"})  # free again once deleted


async def test_concurrent_inserts_answer_each_alone(indexed: Store):
    """Inserts started together (both backends send them in groups): each caller gets its own
    document, or its own Conflict; one conflict takes nothing else down with it."""
    p = new_id()
    await indexed.insert("thing", {"parent_id": p, "name": "taken"})
    names_sent = [f"n{i}" for i in range(12)] + ["taken", "n3", "n13"]  # two duplicates among them
    answers: dict[int, object] = {}

    async def insert(i: int, name: str) -> None:
        try:
            answers[i] = await indexed.insert("thing", {"parent_id": p, "name": name, "i": i})
        except Conflict as exc:
            answers[i] = exc

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(names_sent):
            nursery.start_soon(insert, i, name)

    conflicts = [i for i, a in answers.items() if isinstance(a, Conflict)]
    assert len(answers) == len(names_sent)
    assert sorted(names_sent[i] for i in conflicts) == ["n3", "taken"]  # "taken", one of the two n3
    assert all(a.index == SCOPED_NAME.name for a in answers.values() if isinstance(a, Conflict))
    for i, a in answers.items():
        if not isinstance(a, Conflict):
            assert a["i"] == i and a["name"] == names_sent[i]
            assert await indexed.get("thing", a["_id"]) == a
    stored = await names(indexed, {"parent_id": p})
    assert stored == sorted([f"n{i}" for i in range(12)] + ["n13", "taken"])


async def test_ensure_indexes_is_idempotent(indexed: Store):
    await indexed.ensure_indexes("thing", [SCOPED_NAME, BY_PARENT])
    await indexed.ensure_indexes("thing", [SCOPED_NAME])
    await indexed.ensure_indexes("thing", [])
    p = new_id()
    await indexed.insert("thing", {"parent_id": p, "name": "web"})
    with pytest.raises(Conflict):
        await indexed.insert("thing", {"parent_id": p, "name": "web"})
    assert await names(indexed, {"parent_id": p}) == ["web"]


async def test_unique_treats_missing_scope_as_one_scope(indexed: Store, backend: str, request):
    """MongoDB indexes a missing field as null, and nulls collide in a unique index."""
    if backend.startswith("mongo"):
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="nx-27017 lets nulls repeat in unique indexes (real MongoDB does not)")
        )
    await indexed.insert("thing", {"name": "top"})
    with pytest.raises(Conflict):
        await indexed.insert("thing", {"name": "top"})


@pytest.mark.parametrize("bad", [Index("bad name", ("a",)), Index("ok", ()), Index("ok", ("bad field",))])
async def test_invalid_indexes_are_refused(store: Store, bad):
    with pytest.raises(ValueError):
        await store.ensure_indexes("thing", [bad])


# --- cache invalidation (through the store, every variant) -----------------------------------

async def test_writes_are_seen_by_the_next_get(store: Store):
    """Every write path shows at once through `get` (the cached variants must invalidate)."""
    doc = await store.insert("thing", {"name": "a", "n": 1})
    assert (await store.get("thing", doc["_id"]))["n"] == 1
    await store.update_fields("thing", doc["_id"], {"n": 2})
    assert (await store.get("thing", doc["_id"]))["n"] == 2
    await store.replace("thing", {"_id": doc["_id"], "name": "a", "n": 3})
    assert (await store.get("thing", doc["_id"]))["n"] == 3
    await store.delete("thing", doc["_id"])
    with pytest.raises(NotFound):
        await store.get("thing", doc["_id"])  # upstream's cache answered the deleted document here
    await store.insert("thing", {"_id": doc["_id"], "name": "a", "n": 4})
    assert (await store.get("thing", doc["_id"]))["n"] == 4


async def test_results_are_private_copies(store: Store):
    doc = await store.insert("thing", {"name": "a", "meta": {"tags": ["x"]}})
    doc["meta"]["tags"].append("from insert")
    for _ in range(3):  # a miss, then hits on the cached variants
        got = await store.get("thing", doc["_id"])
        assert got == {"_id": doc["_id"], "name": "a", "meta": {"tags": ["x"]}}
        got["meta"]["tags"].append("from get")
        got["name"] = "mutated"
    found = await store.find("thing")
    found[0]["meta"]["tags"].append("from find")
    assert (await store.get("thing", doc["_id"]))["meta"]["tags"] == ["x"]


# --- the cache itself ------------------------------------------------------------------------

async def test_cache_serves_repeated_gets(cached: CachedStore):
    """Proves the cache caches, so the invalidation tests below are not vacuous."""
    doc = await cached.insert("thing", {"n": 1})
    await cached.get("thing", doc["_id"])
    await cached.inner.update_fields("thing", doc["_id"], {"n": 2})  # behind the cache's back
    assert (await cached.get("thing", doc["_id"]))["n"] == 1
    assert cached.hits == 1 and cached.misses == 1


@pytest.mark.parametrize("write", ["insert", "replace", "update_fields", "delete"])
async def test_cache_invalidated_by_every_write_path(cached: CachedStore, write: str):
    doc = await cached.insert("thing", {"name": "a", "n": 1})
    await cached.get("thing", doc["_id"])  # now cached
    if write == "insert":
        await cached.inner.delete("thing", doc["_id"])
        await cached.insert("thing", {"_id": doc["_id"], "name": "a", "n": 2})
    elif write == "replace":
        await cached.replace("thing", {"_id": doc["_id"], "name": "a", "n": 2})
    elif write == "update_fields":
        await cached.update_fields("thing", doc["_id"], {"n": 2})
    else:
        await cached.delete("thing", doc["_id"])
        with pytest.raises(NotFound):
            await cached.get("thing", doc["_id"])
        return
    assert (await cached.get("thing", doc["_id"]))["n"] == 2


async def test_cache_invalidated_even_when_the_write_fails(cached: CachedStore):
    await cached.ensure_indexes("thing", [EMAIL])
    await cached.insert("thing", {"email": "taken"})
    doc = await cached.insert("thing", {"email": "mine", "n": 1})
    await cached.get("thing", doc["_id"])
    await cached.inner.update_fields("thing", doc["_id"], {"n": 2})
    with pytest.raises(Conflict):
        await cached.update_fields("thing", doc["_id"], {"email": "taken"})
    assert (await cached.get("thing", doc["_id"]))["n"] == 2


async def test_cache_entries_expire(cached: CachedStore):
    now = [0.0]
    c = CachedStore(cached.inner, max_entries=10, ttl_seconds=5, clock=lambda: now[0])
    doc = await c.insert("thing", {"n": 1})
    await c.get("thing", doc["_id"])
    await c.inner.update_fields("thing", doc["_id"], {"n": 2})
    now[0] = 4.9
    assert (await c.get("thing", doc["_id"]))["n"] == 1
    now[0] = 5.0
    assert (await c.get("thing", doc["_id"]))["n"] == 2
    now[0] = 20.0
    assert c.sweep() == 1 and len(c) == 0


async def test_cache_is_lru_bounded(cached: CachedStore):
    c = CachedStore(cached.inner, max_entries=2, ttl_seconds=60)
    a, b, d = [await c.insert("thing", {"name": n, "v": 1}) for n in "abd"]
    for doc in (a, b, a, d):  # b is now the least recently used, and the third entry evicts it
        await c.get("thing", doc["_id"])
    assert len(c) == 2
    for doc in (a, b, d):
        await c.inner.update_fields("thing", doc["_id"], {"v": 2})
    assert (await c.get("thing", a["_id"]))["v"] == 1
    assert (await c.get("thing", d["_id"]))["v"] == 1
    assert (await c.get("thing", b["_id"]))["v"] == 2, "b was evicted"


@pytest.mark.parametrize("read", ["get", "get_shared"])
async def test_cache_does_not_keep_a_read_raced_by_a_write(cached: CachedStore, monkeypatch, read):
    """A get (a copy, or the cached object itself) that read the old version while a write
    landed must not cache it."""
    read_done, gate = trio.Event(), trio.Event()
    real_get = cached.inner.get

    async def slow_get(collection, doc_id):
        doc = await real_get(collection, doc_id)
        read_done.set()
        await gate.wait()
        return doc

    monkeypatch.setattr(cached.inner, "get", slow_get)
    doc = await cached.inner.insert("thing", {"n": 1})
    seen = []

    async def reader() -> None:
        seen.append(await getattr(cached, read)("thing", doc["_id"]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await read_done.wait()  # the slow read holds n=1 ...
        await cached.update_fields("thing", doc["_id"], {"n": 2})  # ... when a write lands
        gate.set()
    assert seen[0]["n"] == 1
    gate.set()
    after = await getattr(cached, read)("thing", doc["_id"])
    assert after["n"] == 2 and after is not seen[0], "the raced read must not have been cached"


# --- availability ----------------------------------------------------------------------------

async def test_mongo_unavailable_when_the_server_goes_away(tmp_path: Path):
    with nx_server(tmp_path / "nx") as server:
        bare = MongoStore(server.uri, "gone", server_selection_timeout_ms=300)
        store = CachedStore(bare, max_entries=10, ttl_seconds=60)
        await store.open()
        doc = await store.insert("thing", {"n": 1})
        assert await store.ping() is True
        server.stop()
        with trio.fail_after(5):
            assert await store.ping() is False
            assert await bare.ping() is False
            for op in (
                store.get("thing", new_id()),
                store.find("thing", {"n": 1}),
                store.count("thing"),
                store.insert("thing", {"n": 2}),
                store.update_fields("thing", doc["_id"], {"n": 3}),
                store.delete("thing", doc["_id"]),
            ):
                with pytest.raises(Unavailable):
                    await op
        await store.close()


async def test_mongo_open_fails_fast_without_a_server():
    with nx_server() as server:
        uri = server.uri
    store = MongoStore(uri, "none", server_selection_timeout_ms=200)
    with trio.fail_after(5):
        with pytest.raises(Unavailable):
            await store.open()
        assert await store.ping() is False
    with pytest.raises(Unavailable):
        await store.get("thing", new_id())


async def test_embedded_unavailable_cases(tmp_path: Path):
    with pytest.raises(Unavailable):
        await EmbeddedStore(tmp_path / "missing-dir" / "x.sqlite3").open()
    (tmp_path / "junk.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(Unavailable):
        await EmbeddedStore(tmp_path / "junk.sqlite3").open()
    store = EmbeddedStore(tmp_path / "ok.sqlite3")
    await store.open()
    assert await store.ping() is True
    await store.close()
    assert await store.ping() is False
    with pytest.raises(Unavailable):
        await store.get("thing", new_id())


async def test_embedded_data_survives_reopen_with_a_connection_pool(tmp_path: Path):
    first = EmbeddedStore(tmp_path / "db.sqlite3", limiter_size=4)
    await first.open()
    await first.ensure_indexes("thing", [SCOPED_NAME])
    p = new_id()

    async def add(i: int) -> None:
        await first.insert("thing", {"parent_id": p, "name": f"n{i}"})

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(add, i)
    await first.close()
    second = EmbeddedStore(tmp_path / "db.sqlite3")
    await second.open()
    assert await second.count("thing", {"parent_id": p}) == 40
    with pytest.raises(Conflict):
        await second.insert("thing", {"parent_id": p, "name": "n7"})
    await second.close()


# --- factory ---------------------------------------------------------------------------------

async def test_open_store_embedded_creates_a_private_data_dir(tmp_path: Path):
    data_dir = tmp_path / "var" / "kahuna"
    async with open_store(
        db_uri=None, db_name="kahuna", data_dir=data_dir,
        cache_enabled=True, cache_max_entries=10, cache_ttl_seconds=5,
    ) as store:
        assert isinstance(store, CachedStore) and isinstance(store.inner, EmbeddedStore)
        doc = await store.insert("thing", {"n": 1})
        assert (await store.get("thing", doc["_id"]))["n"] == 1
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    assert (data_dir / "kahuna.sqlite3").exists()
    assert await store.ping() is False, "closed on exit"


async def test_open_store_mongo_when_a_uri_is_given(nx, tmp_path: Path):
    async with open_store(
        db_uri=nx.uri, db_name="factory", data_dir=tmp_path / "unused",
        cache_enabled=False, cache_max_entries=10, cache_ttl_seconds=5,
    ) as store:
        assert isinstance(store, MongoStore)
        assert await store.ping() is True
    assert not (tmp_path / "unused").exists()
    assert isinstance(
        build_store(db_uri=None, db_name="x", data_dir=tmp_path, cache_enabled=False,
                    cache_max_entries=1, cache_ttl_seconds=1),
        EmbeddedStore,
    )
