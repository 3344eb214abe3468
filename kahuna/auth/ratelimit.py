"""Failed-login limits, per account and per source address.

A sliding window of failure times per key: once `limit` failures fall within `window` seconds,
the key is blocked until the oldest of them leaves the window (that wait is the Retry-After).
Keys for accounts are the *submitted* email, whether or not such an account exists, so a
locked-out attacker sees the same answers for real and invented addresses.

Memory is bounded: at most `max_keys` keys are tracked, the least recently touched are dropped
first (a spray of random emails cannot grow the table without end). State is per process: a
restart forgives, which is acceptable for a throttle (the argon2 cost still bounds guessing).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from typing import Callable


class FailureWindow:
    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key: str) -> int:
        """0 when `key` may try now, else whole seconds until it may."""
        now = self._clock()
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[-self.limit] + self.window - now))

    def fail(self, key: str) -> None:
        now = self._clock()
        times = self._recent(key, now)
        if times is None:
            times = self._failures[key] = deque(maxlen=max(self.limit, 1))
        times.append(now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def forgive(self, key: str) -> None:
        self._failures.pop(key, None)
