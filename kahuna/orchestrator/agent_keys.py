"""Agent keys: issue and rotate them, and forget an agent — with every consequence in one place.

Issuing a key replaces the previous one (the token module), updates the hub's in-memory
credentials, closes the agent's live session (it must come back with the new key), and mails the
key to `global.adminEmail` when mail is configured. The key itself is returned to the caller only
so that the admin CLI can print it once; the API never answers it.
"""

from __future__ import annotations

from typing import Any

from kahuna.auth import apikeys, mail
from kahuna.logs import get_logger
from kahuna.orchestrator.agent_credentials import StoredAgentCredentials
from kahuna.resources.service import Resources

log = get_logger("kahuna.agents")

CLOSE_KEY_ROTATED = 4000


class AgentKeys:
    def __init__(self, resources: Resources, credentials: StoredAgentCredentials, *,
                 hub: Any = None, admin_email: str = "", mail_enabled: bool = False) -> None:
        self.resources = resources
        self.credentials = credentials
        self.hub = hub
        self.admin_email = admin_email
        self.mail_enabled = mail_enabled

    async def issue(self, agent_id: str, *, expire: bool = False, expiration_date: str | None = None,
                    announce: bool = True) -> tuple[dict, str]:
        """`announce=False` skips telling other processes (a bulk caller does it once at the end
        with `credentials.bump_marker()`)."""
        agent = await self.resources.get("agent", agent_id)
        token, key = await apikeys.issue_key(
            self.resources, self.credentials.server_secret, "agent", agent_id,
            f"{agent['name']}-api-key", expire, expiration_date)
        if announce:
            await self.credentials.refresh(agent_id)
        if self.hub is not None:
            await self.hub.disconnect(agent_id, CLOSE_KEY_ROTATED, "agent key rotated")
        if self.mail_enabled and self.admin_email:
            await mail.enqueue(
                self.resources, self.admin_email, f"Kowabunga agent API key: {agent['name']}",
                f"A new API key was issued for the {agent['type']} agent {agent['name']!r}\n"
                f"(id {agent_id}). Put it in the agent's configuration (global.apiKey):\n\n"
                f"{key}\n\nAny previous key of this agent no longer works.\n")
        log.info("agent key issued", agent=agent_id, expire=bool(expire))
        return token, key

    async def forget(self, agent_id: str) -> None:
        """After an agent is deleted: its key goes, its session closes."""
        await apikeys.revoke_for(self.resources, "agent", agent_id)
        await self.credentials.refresh(agent_id)
        if self.hub is not None:
            await self.hub.disconnect(agent_id, CLOSE_KEY_ROTATED, "agent deleted")
            self.hub.forget(agent_id)
