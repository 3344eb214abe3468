"""The embedded store's group commit: concurrent writes share one transaction (one fsync), yet
each caller sees exactly what it would alone — its own conflict, its own not-found, its own
result — and a write cancelled while it waits for its group never reaches the database.

Groups are made deterministic by holding SQLite's write lock from another connection (as another
process would): the first write's group waits in its `BEGIN IMMEDIATE` (within the busy timeout)
while the writes started next queue behind it and form the following group together.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from kahuna.store.base import Index, new_id
from kahuna.store.embedded import EmbeddedStore
from kahuna.store.errors import Conflict, NotFound


@pytest.fixture
async def store(tmp_path: Path):
    s = EmbeddedStore(tmp_path / "group.sqlite3")
    await s.open()
    await s.ensure_indexes("region", [Index("region__name", ("name",), unique=True)])
    try:
        yield s
    finally:
        await s.close()


@contextmanager
def write_lock_held(path: Path):
    """Another connection holds the database's write lock until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


async def started(nursery: trio.Nursery, fn, *args) -> None:
    nursery.start_soon(fn, *args)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_conflict_in_a_group_fails_that_write_only(store: EmbeddedStore):
    await store.insert("region", {"name": "taken"})
    answers: dict[str, object] = {}

    async def create(name: str) -> None:
        try:
            answers[name] = await store.insert("region", {"name": name})
        except Conflict as exc:
            answers[name] = exc

    async with trio.open_nursery() as nursery:
        with write_lock_held(store.path):
            await started(nursery, create, "first")  # its group waits for the lock
            for name in ("a", "taken", "b", "c"):  # queued: the next group, together
                await started(nursery, create, name)
            assert not answers

    assert isinstance(answers["taken"], Conflict) and answers["taken"].index == "region__name"
    for name in ("first", "a", "b", "c"):
        assert answers[name]["name"] == name
        assert (await store.get("region", answers[name]["_id"]))["name"] == name
    assert sorted(d["name"] for d in await store.find("region")) == ["a", "b", "c", "first", "taken"]


async def test_every_kind_of_write_in_one_group_answers_alone(store: EmbeddedStore):
    kept = await store.insert("region", {"name": "kept", "n": 1})
    gone = await store.insert("region", {"name": "gone"})
    missing = new_id()
    answers: dict[str, object] = {}

    async def run(label: str, call, *args) -> None:
        try:
            answers[label] = await call(*args)
        except (Conflict, NotFound, ValueError, TypeError) as exc:
            answers[label] = exc

    async with trio.open_nursery() as nursery:
        with write_lock_held(store.path):
            await started(nursery, run, "lead", store.insert, "region", {"name": "lead"})
            await started(nursery, run, "update", store.update_fields, "region", kept["_id"], {"n": 2})
            await started(nursery, run, "update missing", store.update_fields, "region", missing, {"n": 2})
            await started(nursery, run, "bad path", store.update_fields, "region", kept["_id"], {"name.x": 1})
            await started(nursery, run, "rename to taken", store.replace, "region", {"_id": gone["_id"], "name": "kept"})
            await started(nursery, run, "unstorable", store.insert, "region", {"name": "set", "v": {1, 2}})
            await started(nursery, run, "delete", store.delete, "region", gone["_id"])
            await started(nursery, run, "delete missing", store.delete, "region", missing)

    assert answers["update"]["n"] == 2
    assert isinstance(answers["update missing"], NotFound)
    assert isinstance(answers["bad path"], ValueError)
    assert isinstance(answers["rename to taken"], Conflict)
    assert isinstance(answers["unstorable"], TypeError)
    assert answers["delete"] is None
    assert isinstance(answers["delete missing"], NotFound)
    assert await store.get("region", kept["_id"]) == {**kept, "n": 2}
    with pytest.raises(NotFound):
        await store.get("region", gone["_id"])
    assert sorted(d["name"] for d in await store.find("region")) == ["kept", "lead"]


async def test_a_write_cancelled_while_queued_never_happens(store: EmbeddedStore):
    done: dict[str, object] = {}

    async def create(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            done[name] = await store.insert("region", {"name": name})
            return
        done[name] = "cancelled"

    queued = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        with write_lock_held(store.path):
            await started(nursery, create, "running")
            await started(nursery, create, "queued", queued)
            queued.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert done == {"queued": "cancelled"}
            await started(nursery, create, "after")

    assert done["queued"] == "cancelled"
    assert sorted(d["name"] for d in await store.find("region")) == ["after", "running"]


async def test_a_write_cancelled_once_its_group_runs_is_done_and_answered(store: EmbeddedStore):
    done: dict[str, object] = {}

    async def create(scope: trio.CancelScope) -> None:
        with scope:
            done["doc"] = await store.insert("region", {"name": "committed"})
            done["after"] = "the call returned"
            await trio.lowlevel.checkpoint()  # the cancellation arrives here
            done["after"] = "not cancelled"

    scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        with write_lock_held(store.path):
            await started(nursery, create, scope)
            scope.cancel()  # its group is waiting for the lock: too late to stop it
            await trio.testing.wait_all_tasks_blocked()
            assert done == {}

    assert done["after"] == "the call returned"
    assert await store.get("region", done["doc"]["_id"]) == done["doc"]


async def test_writes_queued_when_the_store_closes_are_refused(tmp_path: Path):
    store = EmbeddedStore(tmp_path / "closing.sqlite3")
    await store.open()
    answers: list[object] = []

    async def create(name: str) -> None:
        try:
            answers.append((await store.insert("region", {"name": name}))["name"])
        except Exception as exc:
            answers.append(type(exc).__name__)

    async with trio.open_nursery() as nursery:
        with write_lock_held(store.path):
            await started(nursery, create, "running")
            await started(nursery, create, "queued")
            await store.close()
    assert sorted(answers) == ["Unavailable", "running"]
