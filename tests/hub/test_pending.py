"""Pending-call table: ids never reused, late replies never delivered, fail-all is total."""

import pytest
import trio
import trio.testing

from kahuna.hub.codec import MAX_ID
from kahuna.hub.errors import AgentDisconnected
from kahuna.hub.pending import PendingCalls, Resolution


def test_ids_are_sequential_from_zero_and_resolve_their_own_call():
    table = PendingCalls()
    a, b = table.open("Kaktus.A"), table.open("Kaktus.B")
    assert (a.id, b.id) == (0, 1)
    assert table.resolve(1, "rb", None) is Resolution.DELIVERED
    assert b.done and b.result == "rb"
    assert not a.done
    assert table.resolve(0, None, "failed") is Resolution.DELIVERED
    assert a.error == "failed"
    assert len(table) == 0


def test_late_reply_is_stale_and_never_reaches_the_next_call():
    table = PendingCalls()
    late = table.open("Kaktus.Slow")
    table.discard(late.id)                  # the caller gave up (deadline)
    nxt = table.open("Kaktus.Next")
    assert table.resolve(late.id, "too late", None) is Resolution.STALE
    assert not nxt.done
    assert table.resolve(nxt.id, "mine", None) is Resolution.DELIVERED
    assert nxt.result == "mine"
    assert table.resolve(nxt.id, "again", None) is Resolution.STALE   # duplicate reply


def test_ids_never_issued_are_unknown():
    table = PendingCalls()
    table.open("Kaktus.A")
    assert table.resolve(1, None, None) is Resolution.UNKNOWN
    assert table.resolve(10**6, None, None) is Resolution.UNKNOWN


def test_id_wraps_at_uint64():
    table = PendingCalls(first_id=MAX_ID)
    assert table.open("a").id == MAX_ID
    assert table.open("b").id == 0
    assert table.resolve(5, None, None) is Resolution.UNKNOWN
    table.discard(MAX_ID)
    assert table.resolve(MAX_ID, None, None) is Resolution.STALE


def test_fail_all_wakes_everyone_with_their_own_exception_and_closes():
    table = PendingCalls()
    calls = [table.open(f"Kaktus.M{i}") for i in range(5)]
    assert table.fail_all(lambda: AgentDisconnected("x", "gone")) == 5
    assert all(c.done and isinstance(c.exc, AgentDisconnected) for c in calls)
    assert len({id(c.exc) for c in calls}) == 5
    assert table.closed
    with pytest.raises(AgentDisconnected):
        table.open("Kaktus.After")


def test_fail_one_call():
    table = PendingCalls()
    call = table.open("m")
    assert table.fail(call.id, ValueError("bad"))
    assert isinstance(call.exc, ValueError)
    assert not table.fail(call.id, ValueError("again"))


# ----------------------------------------------------------------------------- the park/unpark wake-up

async def test_parked_waiter_is_woken_by_resolve_fail_and_fail_all():
    table = PendingCalls()
    calls = [table.open(f"m{i}") for i in range(3)]
    woken = []

    async def waiter(call):
        await call.wait()
        woken.append(call.id)

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(waiter, call)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [] and all(c.task is not None for c in calls)
        table.resolve(calls[1].id, "r", None)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1]
        table.fail(calls[0].id, ValueError("bad"))
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [1, 0]
        table.fail_all(lambda: AgentDisconnected("x", "gone"))
    assert woken == [1, 0, 2]
    assert all(c.task is None for c in calls)


async def test_wait_on_a_done_call_returns_at_once():
    table = PendingCalls()
    call = table.open("m")
    table.resolve(call.id, 1, None)
    with trio.fail_after(1):
        await call.wait()
    assert call.result == 1


async def test_cancelled_waiter_unparks_and_a_later_reply_is_stale_not_a_reschedule():
    table = PendingCalls()
    call = table.open("m")
    with trio.move_on_after(0.01) as scope:
        await call.wait()
    assert scope.cancelled_caught and call.task is None and not call.done
    table.discard(call.id)
    # rescheduling a task that is no longer parked would crash trio's run loop
    assert table.resolve(call.id, "late", None) is Resolution.STALE
    await trio.sleep(0)


async def test_a_call_has_exactly_one_waiter(nursery):
    table = PendingCalls()
    call = table.open("m")
    nursery.start_soon(call.wait)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(RuntimeError):
        await call.wait()
    table.resolve(call.id, None, None)
