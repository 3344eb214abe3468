"""Durable flows over a real embedded store: an undo that succeeded is never run again.

The counters' undos are deltas (give back 2 vCPUs): run twice, they corrupt usage. A rollback
whose later undo fails (its agent away) leaves the flow stored for `recover`; the retry must run
only the undos still to do."""

from __future__ import annotations

from types import SimpleNamespace

from kahuna.orchestrator import flows
from kahuna.store.embedded import EmbeddedStore

LEDGER: list[str] = []
FAILURES = {"left": 0}


async def _give_back(res, data: dict) -> None:
    LEDGER.append(f"give back {data['vcpus']}")


async def _delete_image(res, data: dict) -> None:
    if FAILURES["left"] > 0:
        FAILURES["left"] -= 1
        raise RuntimeError("agent disconnected")
    LEDGER.append(f"delete {data['image']}")


flows.register_undo("test.give_back", _give_back)
flows.register_undo("test.delete_image", _delete_image)


async def _res(tmp_path):
    store = EmbeddedStore(tmp_path / "flows.sqlite3")
    await store.open()
    return SimpleNamespace(store=store, extras={})


async def _failed_flow(res):
    flow = await flows.Flow(res, "test.create", "t1").start()
    await flow.record("quota", undo="test.give_back", data={"vcpus": 2})
    await flow.step("image", lambda: _noop(), undo="test.delete_image", data={"image": "vm-os"})
    await flow.rollback()
    return flow


async def _noop() -> None:
    return None


async def test_a_retried_rollback_runs_only_the_undos_left(tmp_path):
    LEDGER.clear()
    FAILURES["left"] = 2  # the image's undo fails at rollback and at the first recovery
    res = await _res(tmp_path)
    try:
        await _failed_flow(res)
        assert LEDGER == ["give back 2"]
        assert await flows.pending(res) == 1  # kept for a retry

        assert await flows.recover(res) == 0  # still failing: nothing re-run
        assert LEDGER == ["give back 2"]

        assert await flows.recover(res) == 1
        assert LEDGER == ["give back 2", "delete vm-os"]
        assert await flows.pending(res) == 0
        assert await flows.recover(res) == 0
        assert LEDGER == ["give back 2", "delete vm-os"]
    finally:
        await res.store.close()


async def test_a_clean_rollback_drops_the_flow(tmp_path):
    LEDGER.clear()
    FAILURES["left"] = 0
    res = await _res(tmp_path)
    try:
        await _failed_flow(res)
        assert LEDGER == ["delete vm-os", "give back 2"]
        assert await flows.pending(res) == 0
    finally:
        await res.store.close()
