"""Calling agents on behalf of a resource, and what a failure means to the API client.

A resource (Kaktus, storage pool, Kiwi) lists the agents that manage it; a call picks one at
random among those that are connected and advertise the method (upstream's `GetEligibleAgent`),
or goes to every connected one (Kiwi's DNS pushes). Hub failures become domain errors with a
status the client can act on, and the agent's own words as the reason:

    no listed agent connected / advertising the method,   503 Service Unavailable
    the agent went away while we waited                   ("no eligible agent: ...")
    the agent answered with an error                      502 Bad Gateway ("agent <id>: <its error>")
    the agent did not answer within the call timeout      504 Gateway Timeout

Upstream answers 422 for all of these; 5xx statuses say what happened (the request itself was
fine, the agent behind us was not) and the client raises `ServiceException` with the reason.
"""

from __future__ import annotations

from typing import Any, Iterable

from kahuna.hub.errors import AgentError, AgentUnavailable, CallTimeout, HubError, NoEligibleAgent
from kahuna.logs import get_logger
from kahuna.resources.errors import DomainError

log = get_logger("kahuna.agents")


class NoAgent(DomainError):
    status, error = 503, "Service Unavailable"


class AgentFailed(DomainError):
    status, error = 502, "Bad Gateway"


class AgentTimedOut(DomainError):
    status, error = 504, "Gateway Timeout"


def translate(exc: HubError, method: str, agent_id: str | None = None) -> DomainError:
    """The API error for a hub failure of `method` (bare name, e.g. "CreateTemplateVolume")."""
    if isinstance(exc, CallTimeout):
        return AgentTimedOut(f"agent {exc.agent_id}: {method} timed out after {exc.timeout:g} s")
    if isinstance(exc, AgentError):
        who = exc.agent_id or agent_id
        return AgentFailed(f"agent {who}: {method} failed: {exc.message}" if who
                           else f"{method} failed: {exc.message}")
    if isinstance(exc, NoEligibleAgent):
        return NoAgent(f"no eligible agent: {exc}")
    if isinstance(exc, AgentUnavailable):
        return NoAgent(f"no eligible agent: {exc}")
    return AgentFailed(f"{method} failed: {exc}")


class AgentCalls:
    """The hub as resources use it. `hub` may be None (an app built without one): every call is
    then refused with 503, and nothing is attempted."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def eligible(self, agent_ids: Iterable[str], method: str) -> list[str]:
        if self.hub is None:
            return []
        return self.hub.eligible_agents(list(agent_ids), method)

    def pick(self, agent_ids: Iterable[str], method: str, what: str) -> str:
        """One eligible agent among `agent_ids`, or 503 naming `what` needs one."""
        agent_ids = list(agent_ids)
        if self.hub is not None:
            try:
                return self.hub.pick_agent(agent_ids, method)
            except NoEligibleAgent:
                pass
        if not agent_ids:
            raise NoAgent(f"no eligible agent: {what} lists no agent")
        raise NoAgent(f"no eligible agent: none of the {len(agent_ids)} agent(s) of {what} "
                      f"is connected with {method}")

    async def call(self, agent_id: str, method: str, params: Any, timeout: float | None = None) -> Any:
        """`method` on one agent; hub failures are raised as the API errors above."""
        if self.hub is None:
            raise NoAgent(f"no eligible agent: agent {agent_id} is not connected")
        try:
            return await self.hub.call(agent_id, method, params, timeout=timeout)
        except HubError as exc:
            log.warning("agent call failed", agent=agent_id, method=method, error=str(exc))
            raise translate(exc, method, agent_id) from None

    async def call_one(self, agent_ids: Iterable[str], method: str, params: Any, what: str,
                       timeout: float | None = None) -> tuple[str, Any]:
        """Pick an eligible agent and call it: (agent id, result)."""
        agent_id = self.pick(agent_ids, method, what)
        return agent_id, await self.call(agent_id, method, params, timeout)
