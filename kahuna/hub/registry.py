"""The routing table: agent id -> its one live, registered session.

Every change is a synchronous method (no await inside), so in trio's single thread a swap is
atomic: there is never a moment where a caller finds no session, or a dead one, for an agent
whose new session is ready. `unregister` only removes the entry if it still points at the session
being removed, so the teardown of a replaced session can never evict its successor (upstream's
race).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session


class Registry:
    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._by_id

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def get(self, agent_id: str) -> Session | None:
        return self._by_id.get(agent_id)

    def ids(self) -> list[str]:
        return list(self._by_id)

    def register(self, session: Session) -> Session | None:
        """Make `session` the agent's session; returns the one it replaced (caller closes it)."""
        old = self._by_id.get(session.agent_id)
        self._by_id[session.agent_id] = session
        return old if old is not session else None

    def unregister(self, session: Session) -> bool:
        """Remove `session` if it is still the agent's current one."""
        if self._by_id.get(session.agent_id) is session:
            del self._by_id[session.agent_id]
            return True
        return False

    def eligible(self, agent_ids: Iterable[str], method: str) -> list[str]:
        """Connected agents among `agent_ids` (order kept, duplicates once) advertising `method`."""
        out = []
        for agent_id in dict.fromkeys(agent_ids):
            session = self._by_id.get(agent_id)
            if session is not None and session.supports(method):
                out.append(agent_id)
        return out

    def pick(self, agent_ids: Iterable[str], method: str, rng: random.Random) -> str | None:
        eligible = self.eligible(agent_ids, method)
        return rng.choice(eligible) if eligible else None
