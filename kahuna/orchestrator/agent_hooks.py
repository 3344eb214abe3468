"""What Kahuna does when an agent has connected (after its Capabilities call), per agent type.

- Kaktus: `NodeCapabilities`, kept on the agent document (`capabilities`), where the hypervisor
  resources that list this agent read it.
- Kiwi: `Reload` with every DNS domain it serves (the regions' domains and their records).
- Kontroller: `Reload`, so the appliance re-reads its metadata.
Each hook calls only methods the agent advertised; failures are logged by the hub, never fatal.
"""

from __future__ import annotations

from kahuna.logs import get_logger
from kahuna.resources.service import Resources

log = get_logger("kahuna.agents")

HOOK_TIMEOUT = 60.0


def _advertises(hub, agent_id: str, method: str) -> bool:
    status = hub.status(agent_id) or {}
    return method in (status.get("methods") or ())


async def dns_domains(resources: Resources) -> list[dict]:
    """Kiwi's `Reload` argument: one entry per region domain, with its records."""
    domains = []
    for region in await resources.list("region"):
        if region.get("domain"):
            domains.append({"Name": region["domain"], "Records": []})
    return domains


def install(hub, resources: Resources) -> None:
    async def kaktus(agent_id: str) -> None:
        if not _advertises(hub, agent_id, "NodeCapabilities"):
            return
        caps = await hub.call(agent_id, "Kaktus.NodeCapabilities", {}, timeout=HOOK_TIMEOUT)
        agent = await resources.get("agent", agent_id)
        if agent.get("capabilities") != caps:  # a reconnect storm rewrites nothing
            await resources.set_fields("agent", agent_id, {"capabilities": caps})
            log.info("kaktus capabilities stored", agent=agent_id)

    async def kiwi(agent_id: str) -> None:
        if not _advertises(hub, agent_id, "Reload"):
            return
        domains = await dns_domains(resources)
        await hub.call(agent_id, "Kiwi.Reload", {"Domains": domains}, timeout=HOOK_TIMEOUT)
        log.info("kiwi reloaded", agent=agent_id, domains=len(domains))

    async def kontroller(agent_id: str) -> None:
        if _advertises(hub, agent_id, "Reload"):
            await hub.call(agent_id, "Kontroller.Reload", {}, timeout=HOOK_TIMEOUT)

    hub.on_connect("Kaktus", kaktus)
    hub.on_connect("Kiwi", kiwi)
    hub.on_connect("Kontroller", kontroller)
