"""Hub counters: plain integers bumped inline (no locks: one trio thread owns them)."""

from __future__ import annotations

from collections import Counter
from typing import Any


class HubStats:
    __slots__ = ("connections", "sessions", "registrations", "replaced", "disconnects",
                 "stale_replies", "unknown_replies", "text_frames", "malformed_frames",
                 "heartbeat_timeouts", "hook_failures", "calls", "call_timeouts", "call_errors",
                 "rejected")

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

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        out["rejected"] = dict(self.rejected)
        return out
