"""Agent routes beyond generic CRUD: key rotation (as the official client sends it) and live
status (our extension: `GET /agent/{agentId}/status`)."""

from __future__ import annotations

from kahuna.api.routes import RouteTable, json_response, token_expiration
from kahuna.orchestrator.agent_keys import AgentKeys
from kahuna.resources.service import Resources
from kahuna.resources.views import present

OFFLINE = {"connected": False, "version": None, "methods": [], "connected_since": None,
           "last_seen": None, "remote_address": None}


def install(table: RouteTable, resources: Resources, keys: AgentKeys, hub) -> None:
    async def set_token(principal, agentId):
        expire, expiration = token_expiration("expire", "expirationDate")
        token, _key = await keys.issue(agentId, expire=expire, expiration_date=expiration)
        return json_response(present("token", token))

    async def status(principal, agentId):
        await resources.get("agent", agentId)
        live = hub.status(agentId) if hub is not None else None
        body = {**OFFLINE, **(live or {})}
        body["methods"] = sorted(body.get("methods") or [])
        return json_response(body)

    table.add("/agent/{agentId}/token", "PATCH", "admin", set_token, name="set_agent_api_token")
    table.add("/agent/{agentId}/status", "GET", "admin", status, name="read_agent_status")
