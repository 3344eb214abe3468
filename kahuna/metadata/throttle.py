"""Token buckets per key (source address, instance id) for the metadata endpoint.

Why buckets and not the login module's failure window: metadata reads are legitimate in bursts
(a boot storm: hundreds of instances behind one Kawaii NAT address, each reading a few times),
so the limit must allow a large burst and a steady refill, and count *every* request, not only
failures. Failed identifications draw on a second, much smaller bucket per address, so a scan
of guessed instance ids is stopped after a few dozen guesses while honest traffic from the same
NAT address keeps its large allowance.

Memory is bounded (least recently used keys dropped first); state is per process.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Callable


class Buckets:
    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        """How many keys are tracked (bounded by `max_keys`)."""
        return len(self._state)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._state.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def retry_after(self, key: str) -> int:
        """0 when `key` has a token now, else whole seconds until it has one."""
        tokens = self._level(key, self._clock())
        if tokens >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def take(self, key: str) -> int:
        """Spend one token: 0 on success, else the Retry-After in seconds (nothing spent)."""
        now = self._clock()
        tokens = self._level(key, now)
        if tokens < 1.0:
            self._state[key] = (tokens, now)
            self._state.move_to_end(key)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
        self._state[key] = (tokens - 1.0, now)
        self._state.move_to_end(key)
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)
        return 0
