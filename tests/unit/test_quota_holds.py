"""A flow's quota step, crashed at each of its two store writes, over a real embedded store.

A volume create records its quota step in its flow document and moves the project's usage: two
writes of two documents. A process killed between them must leave nothing to correct by hand once
`recover` has run: usage back to what it was, whichever write was the last one made. The "crash"
is the store refusing every write from that point on (what a SIGKILL looks like from the store);
recovery then runs on the same file, as the next process would. And the holds themselves: taken
once, given back once, kept when their flow finished without settling them."""

from __future__ import annotations

import pytest

from kahuna.orchestrator import flows
from kahuna.orchestrator.volumes import VolumeEffects
from kahuna.resources import identity, volume  # noqa: F401  (the project and volume kinds)
from kahuna.resources import quota
from kahuna.resources.service import Resources
from kahuna.store.base import new_id
from kahuna.store.embedded import EmbeddedStore

GiB = 1 << 30


class Killed(BaseException):
    """The process died: nothing after this write happens."""


class DyingStore:
    """The embedded store, until the `n`th write of `collection`: that write and every later one
    never happen."""

    def __init__(self, store: EmbeddedStore, collection: str, n: int) -> None:
        self.store, self.collection, self.left, self.dead = store, collection, n, False

    def __getattr__(self, name):
        return getattr(self.store, name)

    def _write(self, collection: str) -> None:
        if not self.dead and collection == self.collection:
            self.left -= 1
            self.dead = self.left <= 0
        if self.dead:
            raise Killed()

    async def update_fields(self, collection, doc_id, fields):
        self._write(collection)
        return await self.store.update_fields(collection, doc_id, fields)

    async def insert(self, collection, doc):
        self._write(collection)
        return await self.store.insert(collection, doc)

    async def replace(self, collection, doc):
        self._write(collection)
        return await self.store.replace(collection, doc)

    async def delete(self, collection, doc_id):
        self._write(collection)
        return await self.store.delete(collection, doc_id)


async def _world(store) -> tuple[str, dict]:
    project = {"_id": new_id(), "name": "p", "quotas": {"storage": 40 * GiB},
               "usage": {"vcpus": 0, "memory": 0, "storage": 3 * GiB, "instances": 0}}
    await store.insert("project", project)
    vol = {"_id": new_id(), "project_id": project["_id"], "name": "v", "type": "raw", "size": 2 * GiB,
           "image": "v", "storage_pool_id": new_id(), "instance_id": ""}
    await store.insert("volume", vol)
    await store.insert("storage_pool", {"_id": vol["storage_pool_id"], "name": "ssd", "libvirt_pool": "ssd",
                                        "agent_ids": []})
    return project["_id"], vol


# the flow's writes: 1 its insert, 2 the document's record, 3 the quota step's record, 4 the image
# step's record; the project's 1st write is the usage moving
@pytest.mark.parametrize("collection,n", [("flow", 3), ("project", 1), ("flow", 4)])
async def test_a_volume_create_killed_at_its_quota_step_gives_nothing_away(tmp_path, collection, n):
    store = EmbeddedStore(tmp_path / "kahuna.sqlite3")
    await store.open()
    try:
        project_id, vol = await _world(store)
        dying = Resources(DyingStore(store, collection, n))
        flow = await flows.Flow(dying, "volume.create", vol["_id"]).start()
        with pytest.raises(Killed):
            await VolumeEffects(None).create_in(dying, vol, flow)
        flow.release()  # the process is gone

        res = Resources(store)  # the next process
        assert await flows.recover(res) == 1
        assert await flows.pending(res) == 0
        project = await res.get("project", project_id)
        assert project["usage"]["storage"] == 3 * GiB
        assert await store.count("volume") == 0
        # and the next reservation of the project still counts exactly
        assert (await quota.reserve(res, project_id, storage=GiB))["storage"] == 4 * GiB
    finally:
        await store.close()


async def test_holds_of_finished_flows_are_kept_and_dropped_those_of_stored_flows_stay(tmp_path):
    store = EmbeddedStore(tmp_path / "kahuna.sqlite3")
    await store.open()
    try:
        project_id, _ = await _world(store)
        res = Resources(store)
        done = await flows.Flow(res, "test.done").start()
        running = await flows.Flow(res, "test.running").start()
        await quota.reserve(res, project_id, hold=f"{done.id}-a", storage=GiB)
        await quota.reserve(res, project_id, hold=f"{running.id}-b", storage=2 * GiB)
        await done.finish()  # ended without settling: its hold was kept
        usage = await quota.reserve(res, project_id, hold=f"{running.id}-c", storage=GiB)
        assert usage["storage"] == 7 * GiB
        project = await res.get("project", project_id)
        assert set(project[quota.HOLDS]) == {f"{running.id}-b", f"{running.id}-c"}
        # a hold is taken once, given back once
        await quota.reserve(res, project_id, hold=f"{running.id}-c", storage=GiB)
        assert await quota.settle(res, project_id, f"{running.id}-b", keep=False)
        assert not await quota.settle(res, project_id, f"{running.id}-b", keep=False)
        assert not await quota.settle(res, project_id, f"{done.id}-a", keep=False)
        project = await res.get("project", project_id)
        assert project["usage"]["storage"] == 5 * GiB and set(project[quota.HOLDS]) == {f"{running.id}-c"}
        await running.finish()
    finally:
        await store.close()


async def test_an_instance_delete_killed_before_its_give_back_gives_it_back_once_at_recovery(tmp_path):
    """The store side of an instance delete removes the document, then gives its usage back; a
    process killed between the two used to leave the usage counted for ever (recovery found the
    document gone and stopped). Now the give-back is keyed by the flow: recovery makes it once."""
    from kahuna.orchestrator import instances
    from kahuna.resources import instance as _instance  # noqa: F401  (the instance kind)

    store = EmbeddedStore(tmp_path / "kahuna.sqlite3")
    await store.open()
    try:
        project = {"_id": new_id(), "name": "p", "quotas": {},
                   "usage": {"vcpus": 6, "memory": 6 * GiB, "storage": 0, "instances": 3}}
        await store.insert("project", project)
        doc = {"_id": new_id(), "project_id": project["_id"], "kaktus_id": "", "name": "vm", "vcpus": 2,
               "memory": 2 * GiB, "volume_ids": [], "kwarantine_ids": [], "iso_volume": "vm-cloudinit"}
        await store.insert("instance", doc)
        dying = Resources(DyingStore(store, "project", 1))  # dies at the usage's write
        flow = await flows.Flow(dying, "instance.delete", doc["_id"]).start()
        hold = f"{flow.id}-release"
        await flow.record("delete", undo="instance.delete", data={"instance": doc, "hold": hold})
        with pytest.raises(Killed):
            await instances.finish_delete(dying, doc, hold=hold)
        flow.release()  # the process is gone
        assert await store.count("instance") == 0

        res = Resources(store)  # the next process
        assert await flows.recover(res) == 1
        usage = (await res.get("project", project["_id"]))["usage"]
        assert (usage["instances"], usage["vcpus"], usage["memory"]) == (2, 4, 4 * GiB)
        # given back once: the same step run again changes nothing
        await quota.release_once(res, project["_id"], hold, instances=1, vcpus=2, memory=2 * GiB)
        usage = (await res.get("project", project["_id"]))["usage"]
        assert (usage["instances"], usage["vcpus"], usage["memory"]) == (2, 4, 4 * GiB)
    finally:
        await store.close()
