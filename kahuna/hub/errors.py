"""Exceptions raised to callers of the hub.

They are what the REST layer maps to HTTP answers, so each names one situation a caller can act
on: the agent is not there (`AgentNotConnected`, `NoEligibleAgent`), it went away while we waited
(`AgentDisconnected`), it did not answer in time (`CallTimeout`), or it answered with an error
(`AgentError`, including replies we could not understand: `MalformedReply`).
"""

from __future__ import annotations


class HubError(Exception):
    """Base class of every error the hub raises to its callers."""


class AgentUnavailable(HubError):
    """The call could not be carried out because no usable session exists (HTTP 503 territory)."""


class AgentNotConnected(AgentUnavailable):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id} is not connected")
        self.agent_id = agent_id


class AgentDisconnected(AgentUnavailable):
    """The session ended (or was replaced) while the call was pending or being sent."""

    def __init__(self, agent_id: str, reason: str = "agent disconnected") -> None:
        super().__init__(f"agent {agent_id}: {reason}")
        self.agent_id = agent_id
        self.reason = reason


class NoEligibleAgent(AgentUnavailable):
    """No connected agent among the candidates advertises the method (upstream's wording)."""

    def __init__(self, message: str = "can't find any eligible agent") -> None:
        super().__init__(message)


class CallTimeout(HubError):
    def __init__(self, agent_id: str, method: str, timeout: float) -> None:
        super().__init__(f"agent {agent_id}: {method} timed out after {timeout:g} s")
        self.agent_id = agent_id
        self.method = method
        self.timeout = timeout


class AgentError(HubError):
    """The agent answered with an error string; `str(exc)` is that string, unchanged."""

    def __init__(self, message: str, *, agent_id: str | None = None, method: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.agent_id = agent_id
        self.method = method


class MalformedReply(AgentError):
    """The agent answered the call with a frame that breaks the protocol (e.g. a non-string error)."""
