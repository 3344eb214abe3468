"""The Kontroller agents of appliance instances (Kawaii gateways, Konvey load balancers).

Each appliance instance has its own agent (type `Kontroller`, name = the instance's name, upstream
§6.4). The appliance flow creates it (`create_agent`, recorded with its undo `kontroller.agent` so
that a failed or crashed create leaves no agent behind) before the Kompute; the Kompute flow asks
`meta_extras` for the cloud-init meta-data each time it renders the ISO: a fresh key is issued then
(the previous one stops working and a live session is closed), so a rebuilt ISO always carries
the only valid key. The key is never mailed (unlike the admin's agent keys) and never logged.

`reload` calls `Kontroller.Reload` on every connected appliance agent of a Kawaii or Konvey after
a change the appliances must apply; failures are logged, never fatal (an appliance not connected
gets its Reload from the hub's connect hook, kahuna.orchestrator.agent_hooks, when it connects).
Deleting an appliance deletes its agent (`delete_agent`): its key goes, its session closes.
"""

from __future__ import annotations

from typing import Any, Iterable

import trio

from kahuna import cloudinit
from kahuna.auth import apikeys
from kahuna.logs import get_logger
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.resources.errors import ConflictError, DomainError, NotFoundError

log = get_logger("kahuna.kontroller")

Doc = dict[str, Any]
AGENT_TYPE = "Kontroller"
UNDO = "kontroller.agent"
RELOAD_TIMEOUT = 10.0
CLOSE_KEY_ROTATED = 4000


def controller_url(res) -> str:
    """The hub's public WebSocket URL, as the appliance reaches it (publicUrl, ws, `/ws`: Caddy
    routes it to the hub's listener)."""
    config = res.extras.get("config")
    public = getattr(config, "public_url", "") or "http://127.0.0.1:8080"
    return cloudinit.controller_url(public.rstrip("/")) + "/ws"


def _owner_mark(owner_id: str) -> str:
    return f"Kontroller agent of appliance {owner_id}"


async def create_agent(res, flow: Flow, name: str, owner_id: str) -> Doc:
    """The Kontroller agent of the appliance instance `name` (of the Kawaii or Konvey
    `owner_id`), recorded on `flow` before it is made (its undo deletes it; after a crash before
    its id was known, it is found by name *and* by the owner's mark in its description, so an
    unrelated agent of that name is never touched). Agent names are unique: one already taken
    is a 409 naming it (upstream made a duplicate)."""
    await flow.record(f"agent {name}", undo=UNDO, data={"agent_id": "", "name": name, "owner_id": owner_id})
    try:
        agent = await res.create("agent", {"name": name, "type": AGENT_TYPE, "description": _owner_mark(owner_id)})
    except ConflictError:
        await flow.remember(name="")
        raise ConflictError(f"an agent named {name} already exists: the appliance instance "
                            f"{name} cannot get its own Kontroller agent") from None
    await flow.remember(agent_id=agent["_id"])
    log.info("kontroller agent created", agent=agent["_id"], name=name)
    return agent


async def issue_key(res, agent_id: str) -> str:
    """A fresh key for the agent: any previous one stops working and its session is closed."""
    keys = res.extras.get("agent_keys")
    secrets = res.extras.get("secrets")
    if keys is not None:
        server_secret = keys.credentials.server_secret
    elif secrets is not None:
        server_secret = secrets.server_secret
    else:
        raise DomainError("no server secret: agent keys cannot be issued")
    agent = await res.get("agent", agent_id)
    _, key = await apikeys.issue_key(res, server_secret, "agent", agent_id, f"{agent['name']}-api-key",
                                     False, None)
    if keys is not None:
        await keys.credentials.refresh(agent_id)
    hub = res.extras.get("hub")
    if hub is not None:
        await hub.disconnect(agent_id, CLOSE_KEY_ROTATED, "agent key rotated")
    return key


async def agent_of_instance(res, instance: Doc) -> Doc | None:
    found = [a for a in await res.list("agent", name=instance["name"]) if a.get("type") == AGENT_TYPE]
    return found[0] if found else None


async def meta_extras(res, instance: Doc) -> dict[str, str]:
    """Extra CloudInitProfile fields of an appliance instance's meta-data (the Kompute flow calls
    it each time the ISO is rendered): the hub's URL, the agent's id and a freshly issued key."""
    agent = await agent_of_instance(res, instance)
    if agent is None:
        return {}
    key = await issue_key(res, agent["_id"])
    return {"controller_url": controller_url(res), "controller_agent_id": agent["_id"],
            "controller_agent_token": key}


async def delete_agent(res, agent_id: str) -> None:
    """Idempotent: the agent document goes (its key is revoked and its session closed by the
    agent kind's delete hook)."""
    if not agent_id:
        return
    try:
        await res.delete("agent", agent_id)
    except NotFoundError:
        return
    log.info("kontroller agent deleted", agent=agent_id)


async def reload(res, agent_ids: Iterable[str], *, what: str = "") -> int:
    """`Kontroller.Reload` on every connected agent among `agent_ids`, all at once, each bounded;
    answers how many succeeded. Errors are logged (the appliance catches up when it reconnects)."""
    hub = res.extras.get("hub")
    if hub is None:
        return 0
    targets = [a for a in agent_ids if a and hub.is_connected(a)]
    done = 0

    async def one(agent_id: str) -> None:
        nonlocal done
        try:
            await hub.call(agent_id, "Kontroller.Reload", {}, timeout=RELOAD_TIMEOUT)
            done += 1
        except Exception as exc:  # logged, never fatal: the change is stored already
            log.warning("kontroller reload failed", agent=agent_id, of=what, error=str(exc)[:200])

    with trio.move_on_after(RELOAD_TIMEOUT + 1):
        async with trio.open_nursery() as nursery:
            for agent_id in targets:
                nursery.start_soon(one, agent_id)
    return done


async def _undo(res, data: Doc) -> None:
    agent_id = data.get("agent_id") or ""
    if not agent_id and data.get("name"):
        agent_id = next((a["_id"] for a in await res.list("agent", name=data["name"])
                         if a.get("description") == _owner_mark(data.get("owner_id", ""))), "")
    await delete_agent(res, agent_id)


register_undo(UNDO, _undo)
