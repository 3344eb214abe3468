"""Kaktus side effects: the node's capabilities (`NodeCapabilities`).

They are fetched when a Kaktus agent connects (kahuna.orchestrator.agent_hooks, for every Kaktus
listing the agent) and, so that an operator does not wait for a reconnect, right after a Kaktus
is created or its agents change when one of them is already connected. The latter is bounded
and best effort: a Kaktus is valid without capabilities (`GET /kaktus/{id}/caps` answers an
all-zero object until they are known).
"""

from __future__ import annotations

from typing import Any

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator.agent_calls import AgentCalls
from kahuna.resources.compute import caps_from_node, store_caps
from kahuna.resources.errors import DomainError

log = get_logger("kahuna.compute")

QUIET_TIMEOUT = 15.0


class ComputeEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)

    async def refresh_caps(self, res, kaktus: dict, *, lock: bool = True) -> dict:
        agent_id, reply = await self.calls.call_one(kaktus.get("agent_ids") or (), "NodeCapabilities",
                                                    {}, f"Kaktus {kaktus.get('name')}")
        caps = caps_from_node(reply)
        await store_caps(res, kaktus["_id"], caps, lock=lock)
        return caps

    async def refresh_caps_quietly(self, res, kaktus: dict, *, lock: bool = True) -> None:
        if not self.calls.eligible(kaktus.get("agent_ids") or (), "NodeCapabilities"):
            return
        try:
            with trio.fail_after(QUIET_TIMEOUT):
                await self.refresh_caps(res, kaktus, lock=lock)
        except (DomainError, ValueError, trio.TooSlowError) as exc:
            log.warning("kaktus capabilities not refreshed", kaktus=kaktus["_id"],
                        error=getattr(exc, "reason", str(exc) or "timed out"))
