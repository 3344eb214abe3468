"""Counters bumped on hot paths: a dict increment and a bisect, no locks (one trio thread owns
them), no prometheus-client objects (their per-sample locks and label lookups cost more than the
request they count). Read at scrape time by kahuna.api.metrics.

A histogram here is `Latency`: per key, non-cumulative bucket counts (last = +Inf) and a sum, the
shape HubStats uses too, turned cumulative only when exported.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Hashable

# seconds: an API request or a store operation is ~0.1-5 ms; a slow one shows above 0.1 s
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5, 1.0, 2.5, 5.0, 10.0)


class Latency:
    """Per key: bucket counts (`le` the bucket's upper bound, inclusive) and the sum of values."""

    __slots__ = ("buckets", "counts", "sums")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[Hashable, list[int]] = {}
        self.sums: dict[Hashable, float] = {}

    def observe(self, key: Hashable, seconds: float) -> None:
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.buckets) + 1)
            self.sums[key] = 0.0
        counts[bisect_left(self.buckets, seconds)] += 1
        self.sums[key] += seconds


class HttpStats:
    """Requests by (route template, method, status) and latency by (route template, method)."""

    __slots__ = ("requests", "latency")

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency = Latency()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, status)] += 1
        self.latency.observe((route, method), seconds)


class StoreStats:
    """Backend operations: latency by (operation, collection); failures by (operation,
    collection, exception class)."""

    __slots__ = ("latency", "errors")

    def __init__(self) -> None:
        self.latency = Latency()
        self.errors: Counter[tuple[str, str, str]] = Counter()

    def observe(self, op: str, collection: str, seconds: float, error: str | None) -> None:
        self.latency.observe((op, collection), seconds)
        if error is not None:
            self.errors[(op, collection, error)] += 1
