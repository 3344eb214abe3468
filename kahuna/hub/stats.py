"""Hub counters: plain integers bumped inline (no locks: one trio thread owns them).

Read at scrape time (kahuna/api/metrics.py exports them): nothing here costs more than an
integer add or a Counter increment on the path where it happens.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any

# Call latency histogram bounds (seconds, Prometheus `le`): agent calls range from a sub-ms Echo
# to a template download of minutes.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# call outcomes in `calls_by`
OK, ERROR, TIMEOUT, DISCONNECTED = "ok", "error", "timeout", "disconnected"


class HubStats:
    __slots__ = ("connections", "sessions", "registrations", "replaced", "disconnects",
                 "stale_replies", "unknown_replies", "text_frames", "malformed_frames",
                 "heartbeat_timeouts", "hook_failures", "calls", "call_timeouts", "call_errors",
                 "rejected", "sessions_by_type", "handshakes", "calls_by", "call_latency_counts",
                 "call_latency_sum", "frames_in", "frames_out", "backpressure_events",
                 "send_buffer_overflows")

    def __init__(self) -> None:
        self.connections = 0        # open TCP connections (gauge), handshaking ones included
        self.sessions = 0           # upgraded WebSocket sessions (gauge), registered or not
        self.registrations = 0      # sessions that passed Capabilities (total)
        self.replaced = 0           # registrations that replaced a live session of the same id
        self.disconnects = 0        # sessions closed by `Hub.disconnect`
        self.stale_replies = 0      # replies to calls that had already given up
        self.unknown_replies = 0    # replies with an id the session never issued
        self.text_frames = 0
        self.malformed_frames = 0
        self.heartbeat_timeouts = 0
        self.hook_failures = 0
        self.calls = 0
        self.call_timeouts = 0
        self.call_errors = 0        # calls answered with an error string
        self.rejected: Counter[str] = Counter()  # handshake refusals and accept errors, by reason
        # registered sessions by agent type (gauge)
        self.sessions_by_type: Counter[str] = Counter()
        # upgrade requests by result: "accepted" or the refusal reason (same names as `rejected`)
        self.handshakes: Counter[str] = Counter()
        # finished calls by (method, outcome): outcome is ok | error | timeout | disconnected
        self.calls_by: Counter[tuple[str, str]] = Counter()
        # finished calls' latency: non-cumulative counts per LATENCY_BUCKETS bound, last = +Inf
        self.call_latency_counts: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.call_latency_sum = 0.0
        self.frames_in = 0          # WebSocket data messages received (replies, text, garbage)
        self.frames_out = 0         # WebSocket data messages sent (requests)
        self.backpressure_events = 0  # sends that found the agent's socket full (bytes buffered)
        self.send_buffer_overflows = 0  # sessions ended because that buffer passed its bound

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        self.handshakes[reason] += 1

    def accepted(self) -> None:
        self.handshakes["accepted"] += 1

    def call_done(self, method: str, outcome: str, seconds: float) -> None:
        """One finished call: its outcome and how long it took."""
        self.calls_by[(method, outcome)] += 1
        self.call_latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.call_latency_sum += seconds

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["rejected"] = dict(self.rejected)
        out["sessions_by_type"] = dict(self.sessions_by_type)
        out["handshakes"] = dict(self.handshakes)
        out["calls_by"] = {f"{method} {outcome}": n for (method, outcome), n in self.calls_by.items()}
        out["call_latency_counts"] = list(self.call_latency_counts)
        out["latency_buckets"] = list(LATENCY_BUCKETS)
        return out
