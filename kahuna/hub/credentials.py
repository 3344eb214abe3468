"""Where the hub learns agent keys: a synchronous, in-memory lookup.

Why synchronous and in memory: a reconnect storm of 10,000 agents must be absorbed without one
database round trip per handshake. The integration layer (REST `/agent` resources, key storage)
keeps a `CredentialSource` current (it unseals keys once, on load and on change) and the hub only
asks it. Replacing an agent's credential (key rotation) is noticed by sessions still completing
their Capabilities call: they are refused registration when the credential they authenticated
with is no longer the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

AGENT_TYPES: frozenset[str] = frozenset({"Kaktus", "Kiwi", "Kontroller"})


@dataclass(frozen=True)
class AgentCredential:
    """One agent's identity and key; `expires_at` None means the key does not expire.

    A naive `expires_at` is taken as UTC.
    """

    agent_id: str
    agent_type: str
    key: str
    expires_at: datetime | None = None
    _expires_ts: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.expires_at is not None:
            at = self.expires_at
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
            object.__setattr__(self, "_expires_ts", at.timestamp())

    def expired(self, now: float) -> bool:
        """True when the key is past its expiry at unix time `now`."""
        return self._expires_ts is not None and now >= self._expires_ts


@runtime_checkable
class CredentialSource(Protocol):
    def lookup(self, agent_id: str) -> AgentCredential | None:
        """The agent's current credential, or None; must be O(1) and never block."""
        ...


class InMemoryCredentials:
    """A dict-backed `CredentialSource` (tests, the bench hub, and the base of the real one)."""

    def __init__(self, credentials: Iterable[AgentCredential] = ()) -> None:
        self._by_id: dict[str, AgentCredential] = {c.agent_id: c for c in credentials}

    def lookup(self, agent_id: str) -> AgentCredential | None:
        return self._by_id.get(agent_id)

    def put(self, credential: AgentCredential) -> None:
        self._by_id[credential.agent_id] = credential

    def remove(self, agent_id: str) -> AgentCredential | None:
        return self._by_id.pop(agent_id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._by_id

    def __iter__(self) -> Iterator[AgentCredential]:
        return iter(list(self._by_id.values()))


def parse_keys_lines(lines: Iterable[str], default_type: str = "Kaktus") -> list[AgentCredential]:
    """Read `id key [type]` lines (the load generator's `-keys` format); `#` starts a comment."""
    creds = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"line {number}: expected 'id key [type]'")
        agent_type = parts[2] if len(parts) == 3 else default_type
        if agent_type not in AGENT_TYPES:
            raise ValueError(f"line {number}: unknown agent type {agent_type!r}")
        creds.append(AgentCredential(parts[0], agent_type, parts[1]))
    return creds
