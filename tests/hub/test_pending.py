"""Pending-call table: ids never reused, late replies never delivered, fail-all is total."""

import pytest

from kahuna.hub.codec import MAX_ID
from kahuna.hub.errors import AgentDisconnected
from kahuna.hub.pending import PendingCalls, Resolution


def test_ids_are_sequential_from_zero_and_resolve_their_own_call():
    table = PendingCalls()
    a, b = table.open("Kaktus.A"), table.open("Kaktus.B")
    assert (a.id, b.id) == (0, 1)
    assert table.resolve(1, "rb", None) is Resolution.DELIVERED
    assert b.done and b.event.is_set() and b.result == "rb"
    assert not a.done and not a.event.is_set()
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
    assert all(c.done and c.event.is_set() and isinstance(c.exc, AgentDisconnected) for c in calls)
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
