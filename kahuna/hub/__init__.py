"""Agent hub: WebSocket sessions with Kaktus/Kiwi/Kontroller agents and RPC calls to them."""

from .credentials import AGENT_TYPES, AgentCredential, CredentialSource, InMemoryCredentials
from .errors import (AgentDisconnected, AgentError, AgentNotConnected, AgentUnavailable,
                     CallTimeout, HubError, MalformedReply, NoEligibleAgent)
from .hub import Hub
from .settings import HubSettings

__all__ = ["AGENT_TYPES", "AgentCredential", "AgentDisconnected", "AgentError", "AgentNotConnected",
           "AgentUnavailable", "CallTimeout", "CredentialSource", "Hub", "HubError", "HubSettings",
           "InMemoryCredentials", "MalformedReply", "NoEligibleAgent"]
