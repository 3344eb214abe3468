"""The connect hooks' coalesced store reads (kahuna.orchestrator.connect_batch).

Many concurrent lookups make one query and each caller gets its own answer; an error reaches
every caller; a cancelled caller (even the one running the query) does not break the others;
every lookup has a deadline; and nothing is cached past a query (a Kaktus created or changed
during a storm is seen by the next lookup)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kahuna.orchestrator.connect_batch import Coalescer, ConnectStore
from kahuna.resources import catalog
from kahuna.resources.errors import NotFoundError, Unavailable
from kahuna.resources.kind import all_kinds
from kahuna.resources.service import Resources
from kahuna.store.base import new_id
from kahuna.store.cache import CachedStore
from kahuna.store.embedded import EmbeddedStore


class Backend:
    """A fetch that records each query's keys and may be held (gate) or made to fail."""

    def __init__(self) -> None:
        self.queries: list[list[str]] = []
        self.gate: trio.Event | None = None
        self.fail: Exception | None = None

    async def fetch(self, keys: dict[str, object]) -> dict[str, str]:
        self.queries.append(list(keys))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: f"answer-{k}" for k in keys if not k.startswith("absent")}


async def _gather(coalescer: Coalescer, keys: list[str], out: dict, nursery: trio.Nursery) -> None:
    async def one(key: str) -> None:
        try:
            out[key] = await coalescer.get(key)
        except Exception as exc:
            out[key] = exc
    for key in keys:
        nursery.start_soon(one, key)


async def test_concurrent_lookups_make_one_query_each_gets_its_own_answer():
    backend = Backend()
    coalescer = Coalescer(backend.fetch)
    out: dict = {}
    keys = [f"k{i}" for i in range(50)]
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, keys, out, nursery)
    assert len(backend.queries) == 1 and sorted(backend.queries[0]) == sorted(keys)
    assert out == {k: f"answer-{k}" for k in keys}


async def test_lookups_arriving_while_a_query_is_in_flight_share_the_next_one():
    backend = Backend()
    backend.gate = trio.Event()
    coalescer = Coalescer(backend.fetch)
    out: dict = {}
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, ["first"], out, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.queries == [["first"]]           # in flight, held
        later = [f"k{i}" for i in range(20)]
        await _gather(coalescer, later, out, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert len(backend.queries) == 1                 # the next batch waits for the first
        backend.gate.set()
    assert len(backend.queries) == 2 and sorted(backend.queries[1]) == sorted(later)
    assert out == {k: f"answer-{k}" for k in ["first", *later]}


async def test_batches_are_bounded():
    backend = Backend()
    coalescer = Coalescer(backend.fetch, max_batch=8)
    out: dict = {}
    keys = [f"k{i}" for i in range(20)]
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, keys, out, nursery)
    assert max(len(q) for q in backend.queries) <= 8
    assert sorted(k for q in backend.queries for k in q) == sorted(keys)
    assert out == {k: f"answer-{k}" for k in keys}


async def test_a_key_the_query_does_not_answer_raises_missing():
    backend = Backend()
    coalescer = Coalescer(backend.fetch, missing=lambda key: LookupError(f"no {key}"))
    out: dict = {}
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, ["here", "absent-1"], out, nursery)
    assert out["here"] == "answer-here"
    assert isinstance(out["absent-1"], LookupError) and str(out["absent-1"]) == "no absent-1"


async def test_an_error_of_the_query_reaches_every_caller_each_its_own_exception():
    backend = Backend()
    backend.fail = RuntimeError("database away")
    coalescer = Coalescer(backend.fetch)
    out: dict = {}
    keys = [f"k{i}" for i in range(10)]
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, keys, out, nursery)
    assert len(backend.queries) == 1
    assert all(isinstance(out[k], RuntimeError) and str(out[k]) == "database away" for k in keys)
    assert len({id(out[k]) for k in keys}) == len(keys)
    backend.fail = None                                  # nothing of the failure is kept
    assert await coalescer.get("k0") == "answer-k0"


async def test_a_cancelled_caller_does_not_break_the_others():
    backend = Backend()
    backend.gate = trio.Event()
    coalescer = Coalescer(backend.fetch)
    out: dict = {}
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, ["leader"], out, nursery)
        await trio.testing.wait_all_tasks_blocked()      # query 1 in flight
        await _gather(coalescer, ["next"], out, nursery)  # leads the next batch
        await trio.testing.wait_all_tasks_blocked()
        quitter = trio.CancelScope()

        async def quit_early() -> None:
            with quitter:
                out["quitter"] = await coalescer.get("quitter")
        nursery.start_soon(quit_early)
        await _gather(coalescer, ["stayer"], out, nursery)
        await trio.testing.wait_all_tasks_blocked()
        quitter.cancel()
        await trio.testing.wait_all_tasks_blocked()
        backend.gate.set()
    assert out == {"leader": "answer-leader", "next": "answer-next", "stayer": "answer-stayer"}
    assert len(backend.queries) == 2


async def test_a_cancelled_leader_hands_its_batch_over():
    backend = Backend()
    backend.gate = trio.Event()
    coalescer = Coalescer(backend.fetch)
    out: dict = {}
    async with trio.open_nursery() as nursery:
        leader = trio.CancelScope()

        async def lead() -> None:
            with leader:
                out["leader"] = await coalescer.get("leader")
        nursery.start_soon(lead)
        await trio.testing.wait_all_tasks_blocked()
        await _gather(coalescer, ["w1", "w2"], out, nursery)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.queries == [["leader"]]           # w1, w2 wait for the next batch
        leader.cancel()                                  # its query is abandoned
        await trio.testing.wait_all_tasks_blocked()
        backend.gate.set()
    assert "leader" not in out
    assert out == {"w1": "answer-w1", "w2": "answer-w2"}
    assert sorted(backend.queries[-1]) == ["w1", "w2"]


async def test_a_cancelled_leader_of_a_waiting_batch_hands_it_over():
    backend = Backend()
    backend.gate = trio.Event()
    coalescer = Coalescer(backend.fetch)
    out: dict = {}
    async with trio.open_nursery() as nursery:
        await _gather(coalescer, ["first"], out, nursery)
        await trio.testing.wait_all_tasks_blocked()      # query 1 in flight
        second = trio.CancelScope()

        async def lead_second() -> None:
            with second:
                out["second"] = await coalescer.get("second")
        nursery.start_soon(lead_second)
        await trio.testing.wait_all_tasks_blocked()
        await _gather(coalescer, ["w"], out, nursery)     # joins the batch "second" leads
        await trio.testing.wait_all_tasks_blocked()
        second.cancel()                                   # before its query started
        await trio.testing.wait_all_tasks_blocked()
        backend.gate.set()
    assert out == {"first": "answer-first", "w": "answer-w"}


async def test_every_lookup_has_a_deadline(autojump_clock):
    backend = Backend()
    backend.gate = trio.Event()                          # never set: the database hangs
    coalescer = Coalescer(backend.fetch, timeout=5.0)
    out: dict = {}

    async def one(key: str) -> None:
        try:
            out[key] = await coalescer.get(key)
        except trio.TooSlowError:
            out[key] = "timed out"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "leader")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(one, "waiter")
    assert out == {"leader": "timed out", "waiter": "timed out"}


# ------------------------------------------------------------- over a real store and Resources


@pytest.fixture
async def resources(tmp_path):
    catalog.load()
    store = CachedStore(EmbeddedStore(tmp_path / "kahuna.sqlite3"), max_entries=64, ttl_seconds=60)
    await store.open()
    for kind in all_kinds():
        await store.ensure_indexes(kind.collection, kind.indexes())
    try:
        yield Resources(store)
    finally:
        await store.close()


async def _agent(res: Resources, name: str) -> str:
    doc = await res.store.insert("agent", {"name": name, "type": "Kaktus"})
    return doc["_id"]


async def test_agents_documents_in_one_query(resources):
    ids = [await _agent(resources, f"a{i}") for i in range(30)]
    reads = ConnectStore(resources)
    out: dict = {}
    async with trio.open_nursery() as nursery:
        for agent_id in ids + [new_id()]:
            async def one(agent_id: str = agent_id) -> None:
                try:
                    out[agent_id] = (await reads.agent(agent_id))["name"]
                except NotFoundError as exc:
                    out[agent_id] = exc
        # the absent one is answered NotFound, like Resources.get
            nursery.start_soon(one)
    assert reads.queries == 1
    assert [out[i] for i in ids] == [f"a{i}" for i in range(30)]
    assert sum(isinstance(v, NotFoundError) for v in out.values()) == 1
    with pytest.raises(NotFoundError):
        await reads.agent("not-an-id")


async def test_listings_follow_the_writes_no_stale_answers(resources):
    a1, a2, a3 = [await _agent(resources, f"a{i}") for i in range(3)]
    reads = ConnectStore(resources)
    assert await reads.listing("kaktus", a1) == []
    kaktus = await resources.store.insert("kaktus", {"name": "k1", "agent_ids": [a1, a2]})
    out: dict = {}
    async with trio.open_nursery() as nursery:
        for agent_id in (a1, a2, a3):
            async def one(agent_id: str = agent_id) -> None:
                out[agent_id] = [d["_id"] for d in await reads.listing("kaktus", agent_id)]
            nursery.start_soon(one)
    assert out == {a1: [kaktus["_id"]], a2: [kaktus["_id"]], a3: []}
    await resources.store.update_fields("kaktus", kaktus["_id"], {"agent_ids": [a3]})
    assert await reads.listing("kaktus", a1) == []
    assert [d["name"] for d in await reads.listing("kaktus", a3)] == ["k1"]
    # each caller gets its own copy: changing one answer changes no other
    async with trio.open_nursery() as nursery:
        got: list = []
        for _ in range(2):
            async def grab() -> None:
                got.append(await reads.listing("kaktus", a3))
            nursery.start_soon(grab)
    got[0][0]["name"] = "changed"
    assert got[1][0]["name"] == "k1"


async def test_a_store_failure_reaches_the_callers(resources):
    reads = ConnectStore(resources)
    agent_id = await _agent(resources, "a")
    await resources.store.close()
    with pytest.raises(Unavailable):
        await reads.agent(agent_id)


NODE_CAPS = {"Arch": "x86_64", "Vendor": "AMD", "Model": "EPYC", "Sockets": 1, "Cores": 16,
             "Threads": 2, "Memory": 137438953472}


async def test_record_caps_with_the_batched_listing_writes_only_what_changed(resources):
    from kahuna.resources import compute

    agent_id = await _agent(resources, "a")
    kaktus = await resources.store.insert("kaktus", {"name": "k", "agent_ids": [agent_id]})
    reads = ConnectStore(resources)
    listed = await reads.listing("kaktus", agent_id)
    assert await compute.record_caps(resources, agent_id, NODE_CAPS, listed=listed) == 1
    stored = await resources.get("kaktus", kaktus["_id"])
    assert stored["capabilities"]["cpu"]["threads"] == 2
    assert stored["virtual_resources"]["vcpu"]["count"] == 2
    # a reconnect: the listing read after the reply already holds these capabilities
    listed = await reads.listing("kaktus", agent_id)
    assert await compute.record_caps(resources, agent_id, NODE_CAPS, listed=listed) == 0
    assert (await resources.get("kaktus", kaktus["_id"]))["updated_at"] == stored["updated_at"]
    # the node changed: written again
    listed = await reads.listing("kaktus", agent_id)
    assert await compute.record_caps(resources, agent_id, {**NODE_CAPS, "Threads": 4}, listed=listed) == 1
    assert (await resources.get("kaktus", kaktus["_id"]))["capabilities"]["cpu"]["threads"] == 4


async def test_agent_writes_of_a_storm_commit_together_and_each_is_seen(tmp_path):
    from kahuna.store.observed import ObservedStore

    seen: list[tuple[str, str]] = []

    class Seen:
        def written(self, collection, doc) -> None:
            seen.append((collection, doc["_id"]))

        def deleted(self, collection, doc_id) -> None:
            pass

    catalog.load()
    observed = ObservedStore(EmbeddedStore(tmp_path / "kahuna.sqlite3"))
    observed.listeners.append(Seen())
    store = CachedStore(observed, max_entries=64, ttl_seconds=60)
    await store.open()
    try:
        res = Resources(store)
        ids = [await _agent(res, f"a{i}") for i in range(25)]
        for agent_id in ids:
            await res.get("agent", agent_id)          # cached: the write must invalidate it
        seen.clear()
        batched = ConnectStore(res)
        out: dict = {}
        gone = new_id()
        async with trio.open_nursery() as nursery:
            for i, agent_id in enumerate(ids + [gone]):
                async def one(agent_id: str = agent_id, i: int = i) -> None:
                    try:
                        out[agent_id] = await batched.set_agent_fields(agent_id, {"capabilities": {"n": i}})
                    except NotFoundError as exc:
                        out[agent_id] = exc
                nursery.start_soon(one)
        assert batched.queries == 1
        assert isinstance(out[gone], NotFoundError)
        for i, agent_id in enumerate(ids):
            assert out[agent_id]["capabilities"] == {"n": i}
            assert (await res.get("agent", agent_id))["capabilities"] == {"n": i}
        assert sorted(seen) == sorted(("agent", agent_id) for agent_id in ids)
    finally:
        await store.close()
    # committed: a fresh store on the same file reads them back
    again = EmbeddedStore(tmp_path / "kahuna.sqlite3")
    await again.open()
    try:
        assert (await again.get("agent", ids[7]))["capabilities"] == {"n": 7}
    finally:
        await again.close()


async def test_the_default_update_fields_many_writes_one_by_one_and_skips_the_absent(tmp_path):
    from kahuna.store.base import Store

    store = EmbeddedStore(tmp_path / "kahuna.sqlite3")
    await store.open()
    try:
        a = await store.insert("agent", {"name": "a"})
        b = await store.insert("agent", {"name": "b"})
        gone = new_id()
        # the base class's loop (what MongoDB and the HA fence use), not the embedded override
        out = await Store.update_fields_many(store, "agent", {a["_id"]: {"x": 1}, gone: {"x": 2},
                                                              b["_id"]: {"x": 3}})
        assert sorted(out) == sorted([a["_id"], b["_id"]])
        assert (await store.get("agent", b["_id"]))["x"] == 3
    finally:
        await store.close()


async def test_a_leader_past_its_deadline_hands_over_to_a_later_caller(autojump_clock):
    backend = Backend()
    backend.gate = trio.Event()
    coalescer = Coalescer(backend.fetch, timeout=5.0)
    out: dict = {}

    async def one(key: str) -> None:
        try:
            out[key] = await coalescer.get(key)
        except trio.TooSlowError:
            out[key] = "timed out"

    async def release_at(t: float) -> None:
        await trio.sleep_until(t)
        backend.gate.set()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(one, "early")                  # leads; times out at start + 5
        await trio.sleep(3.0)
        nursery.start_soon(one, "later")                  # waits for the batch after it
        nursery.start_soon(release_at, start + 6.0)
    assert out == {"early": "timed out", "later": "answer-later"}
    assert len(backend.queries) == 2                      # "later" asked again, under its own deadline
