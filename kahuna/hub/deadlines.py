"""One timer for every deadline of the hub (calls, pongs), instead of a CancelScope per call.

Sans-I/O apart from `run`: entries are added with a timeout and kept in one FIFO lane per
distinct timeout value, so each lane stays sorted by deadline by construction (O(1) add, the
scheduler only looks at lane heads). An entry settled early (its reply came) is `settle()`d:
it stays in its lane until its head position is reached, and a lane is compacted when settled
entries outnumber live ones, so memory follows the live entries, not the call rate.

Entries are any objects with `lane` and `expire()` (see `pending.PendingCall`): `lane` is set
while the entry is armed; `expire()` is called once, at the deadline, if it is still armed.
The run loop sleeps in one CancelScope whose deadline is moved earlier when an entry with a
nearer deadline arrives; expiries within `RESOLUTION` of each other are handled together.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

RESOLUTION = 0.005      # seconds: how late a deadline may fire, so bursts of them go together
_COMPACT_SLACK = 256


class Lane:
    __slots__ = ("timeout", "entries", "live")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.entries: deque[tuple[float, Any]] = deque()
        self.live = 0

    def compact(self) -> None:
        self.entries = deque(item for item in self.entries if item[1].lane is self)


class Deadlines:
    __slots__ = ("_lanes", "_clock", "_scope", "_wake_at")

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._lanes: dict[float, Lane] = {}
        self._clock = clock
        self._scope: trio.CancelScope | None = None
        self._wake_at = math.inf

    def __len__(self) -> int:
        """Armed entries."""
        return sum(lane.live for lane in self._lanes.values())

    def add(self, entry: Any, timeout: float) -> float:
        """Arm `entry` to expire `timeout` seconds from now; answers the deadline."""
        lane = self._lanes.get(timeout)
        if lane is None:
            lane = self._lanes[timeout] = Lane(timeout)
        deadline = self._clock() + timeout
        lane.entries.append((deadline, entry))
        lane.live += 1
        entry.lane = lane
        if deadline < self._wake_at:
            self._wake_at = deadline
            if self._scope is not None:
                self._scope.deadline = deadline
        return deadline

    @staticmethod
    def settle(entry: Any) -> None:
        """Disarm an entry that finished before its deadline (idempotent)."""
        lane = entry.lane
        if lane is not None:
            entry.lane = None
            lane.live -= 1
            if len(lane.entries) > 2 * lane.live + _COMPACT_SLACK:
                lane.compact()

    def expire_due(self, now: float) -> int:
        """Expire every armed entry whose deadline is <= now; answers how many."""
        expired = 0
        for lane in list(self._lanes.values()):
            entries = lane.entries
            while entries and entries[0][0] <= now:
                entry = entries.popleft()[1]
                if entry.lane is lane:
                    entry.lane = None
                    lane.live -= 1
                    expired += 1
                    entry.expire()
            if not entries and not lane.live:
                del self._lanes[lane.timeout]
        return expired

    def next_due(self) -> float:
        """The earliest deadline among lane heads (settled heads included), or inf."""
        return min((lane.entries[0][0] for lane in self._lanes.values() if lane.entries),
                   default=math.inf)

    async def run(self) -> None:
        """Fire deadlines until cancelled (the hub runs one of these)."""
        while True:
            now = self._clock()
            self.expire_due(now)
            due = self.next_due()
            self._wake_at = max(due, now + RESOLUTION) if due != math.inf else math.inf
            with trio.CancelScope(deadline=self._wake_at) as self._scope:
                await trio.sleep_forever()
            self._scope = None
