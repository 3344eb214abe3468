"""The pending-call table of one session (sans-I/O apart from parking the waiting task).

Ids are allocated from a per-session counter and never reused within the session, so a reply that
arrives after its call gave up (deadline, caller cancelled) finds no entry and is dropped: it can
never be taken for the answer to a later call (upstream's late-reply quirk). When the session
ends, `fail_all` wakes every waiter at once with the same exception, and later `open` calls fail
immediately with it. Exceptions are made by a factory, one instance per waiter: an exception
object raised in several tasks at once would share (and garble) one traceback.

The wake-up is a single-slot park: `PendingCall.wait()` parks the calling task with
`trio.lowlevel.wait_task_rescheduled` and whoever completes the call reschedules it. A call has
exactly one waiter (the task that made it), so a `trio.Event` (an attrs object plus a ParkingLot
with its OrderedDict, per call) bought nothing but allocations on the hottest path: measured with
`python -m kahuna.hub` + loadgen, per-call CPU went down with it.

Deadlines: `arm(call, timeout, deadlines)` puts the call on the hub's one timer
(`deadlines.Deadlines`); at the deadline the timer `expire()`s it: the entry leaves the table
(a later reply is stale) and the waiter wakes with `timed_out` set. No CancelScope per call; the
caller's own cancellation still works (the park's abort). A call may instead belong to a
`CallGroup` (a fan-out: one waiting task for many calls, woken once when the last one is done).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import trio

from .codec import MAX_ID
from .deadlines import Deadlines

_settle = Deadlines.settle


class Resolution(enum.Enum):
    DELIVERED = "delivered"
    STALE = "stale"        # an id we issued whose call is no longer waiting (timed out, cancelled)
    UNKNOWN = "unknown"    # an id this session never issued


class CallGroup:
    """Many calls, one waiter: `wait()` returns once every member is done (or cancelled by the
    waiter's own deadline). Members are the group's `calls`, in the order they were added."""

    __slots__ = ("calls", "remaining", "task")

    def __init__(self) -> None:
        self.calls: list[PendingCall] = []
        self.remaining = 0
        self.task: trio.lowlevel.Task | None = None

    def add(self, call: PendingCall) -> None:
        call.group = self
        self.calls.append(call)
        self.remaining += 1

    def _member_done(self) -> None:
        self.remaining -= 1
        if not self.remaining and self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        if not self.remaining:
            await trio.lowlevel.checkpoint()
            return
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED


class PendingCall:
    """One call waiting for its reply; exactly one of (result/error) or exc is meaningful once
    done, unless `timed_out` (its deadline passed first)."""

    __slots__ = ("id", "method", "task", "done", "result", "error", "exc", "timed_out", "lane",
                 "table", "group")

    def __init__(self, call_id: int, method: str, table: PendingCalls | None = None) -> None:
        self.id = call_id
        self.method = method
        self.task: trio.lowlevel.Task | None = None    # the parked waiter, if any
        self.done = False
        self.result: Any = None
        self.error: str | None = None
        self.exc: BaseException | None = None
        self.timed_out = False
        self.lane: Any = None          # set while armed on the hub's timer (see deadlines.py)
        self.table = table
        self.group: CallGroup | None = None

    def expire(self) -> None:
        """The timer's callback at the deadline: leave the table, wake the waiter."""
        if self.done:
            return
        if self.table is not None:
            self.table._calls.pop(self.id, None)
        self.timed_out = True
        self._finish()

    async def wait(self) -> None:
        """Park until the call is done (returns at once if it is); cancellable like any wait.

        Only the task that made the call waits on it: a second waiter is a bug (RuntimeError).
        """
        if self.done:
            return
        if self.task is not None:
            raise RuntimeError("a pending call has exactly one waiter")
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel: Any) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _finish(self) -> None:
        self.done = True
        lane = self.lane
        if lane is not None:
            _settle(self)
        group = self.group
        if group is not None:
            group._member_done()
            return
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


class PendingCalls:
    __slots__ = ("_next_id", "_issued", "_calls", "_closed_by")

    def __init__(self, first_id: int = 0) -> None:
        self._next_id = first_id
        self._issued = 0          # how many ids were handed out (wrap-around safe "ever issued" test)
        self._calls: dict[int, PendingCall] = {}
        self._closed_by: Callable[[], BaseException] | None = None

    @property
    def closed(self) -> bool:
        return self._closed_by is not None

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def open(self, method: str) -> PendingCall:
        """Allocate an id and register a waiter; raises the closing exception after fail_all."""
        if self._closed_by is not None:
            raise self._closed_by()
        call_id = self._next_id
        self._next_id = 0 if call_id == MAX_ID else call_id + 1
        self._issued += 1
        call = PendingCall(call_id, method, self)
        self._calls[call_id] = call
        return call

    def _was_issued(self, call_id: int) -> bool:
        if self._issued > MAX_ID:
            return True
        start = (self._next_id - self._issued) % (MAX_ID + 1)
        return (call_id - start) % (MAX_ID + 1) < self._issued

    def resolve(self, call_id: int, result: Any, error: str | None) -> Resolution:
        """Hand a reply to its waiter; a reply for no waiting call is reported, never delivered."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return Resolution.STALE if self._was_issued(call_id) else Resolution.UNKNOWN
        call.result, call.error = result, error
        call._finish()
        return Resolution.DELIVERED

    def fail(self, call_id: int, exc: BaseException) -> bool:
        """Fail one waiting call (e.g. its reply was malformed); False when nobody waits on it."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return False
        call.exc = exc
        call._finish()
        return True

    def discard(self, call_id: int) -> None:
        """Forget a call whose caller stopped waiting; a later reply will count as stale."""
        call = self._calls.pop(call_id, None)
        if call is not None and call.lane is not None:
            _settle(call)

    def fail_all(self, make_exc: Callable[[], BaseException]) -> int:
        """Fail every waiting call with `make_exc()` and refuse new ones; returns how many failed."""
        if self._closed_by is None:
            self._closed_by = make_exc
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.exc = make_exc()
            call._finish()
        return len(calls)
