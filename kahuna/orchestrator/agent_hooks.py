"""What Kahuna does when an agent has connected (after its Capabilities call), per agent type.

- Kaktus: `NodeCapabilities`, kept on the agent document (`capabilities`) and on every Kaktus
  that lists the agent (kahuna.resources.compute); then `GetStoragePoolStats` for every storage
  pool that lists it (kahuna.orchestrator.storage).
- Kiwi: `Reload` with every DNS domain it serves: the domains and records of the regions whose
  Kiwis list it (kahuna.orchestrator.dns).
- Kontroller: `Reload`, so the appliance re-reads its metadata.
Each hook calls only methods the agent advertised; failures are logged by the hub, never fatal.

The hooks' store reads (the agent's document; the Kaktus and storage pools listing it) and the
agent's capabilities write go through one `ConnectStore` (kahuna.orchestrator.connect_batch): in a
connect storm the hooks of hundreds of agents share one query (one transaction for the writes)
instead of a store round trip apiece; nothing is cached past a query. Writes happen only when
something changed (a storm of unchanged agents writes nothing).

`install` also puts the infrastructure side-effect collaborators (`compute`, `storage`, `dns`)
in `Resources.extras`, where the resource kinds' hooks find them.
"""

from __future__ import annotations

from kahuna.logs import get_logger
from kahuna.orchestrator.compute import ComputeEffects
from kahuna.orchestrator.connect_batch import ConnectStore
from kahuna.orchestrator.dns import DnsEffects
from kahuna.orchestrator.storage import StorageEffects
from kahuna.resources import compute
from kahuna.resources.storage import POOL
from kahuna.resources.service import Resources

log = get_logger("kahuna.agents")

HOOK_TIMEOUT = 60.0


async def dns_domains(resources: Resources, agent_id: str) -> list[dict]:
    """Kiwi's `Reload` argument for one agent: its regions' domains, with their records."""
    return await DnsEffects(None).reload_domains(resources, agent_id)


def install(hub, resources: Resources) -> None:
    resources.extras.setdefault("compute", ComputeEffects(hub))
    resources.extras.setdefault("storage", StorageEffects(hub))
    resources.extras.setdefault("dns", DnsEffects(hub))
    storage, dns = resources.extras["storage"], resources.extras["dns"]

    batched = ConnectStore(resources)

    async def kaktus(agent_id: str) -> None:
        if not hub.advertises(agent_id, "NodeCapabilities"):
            return
        caps = await hub.call(agent_id, "Kaktus.NodeCapabilities", {}, timeout=HOOK_TIMEOUT)
        agent = await batched.agent(agent_id)
        if agent.get("capabilities") != caps:  # a reconnect storm rewrites nothing
            await batched.set_agent_fields(agent_id, {"capabilities": caps})
            log.info("kaktus capabilities stored", agent=agent_id)
        await compute.record_caps(resources, agent_id, caps,
                                  listed=await batched.listing("kaktus", agent_id))

    async def kaktus_pools(agent_id: str) -> None:
        if hub.advertises(agent_id, "GetStoragePoolStats"):
            await storage.on_agent_connect(resources, agent_id,
                                           pools=await batched.listing(POOL.name, agent_id))

    async def kiwi(agent_id: str) -> None:
        if not hub.advertises(agent_id, "Reload"):
            return
        await dns.reload_agent(resources, agent_id, timeout=HOOK_TIMEOUT)

    async def kontroller(agent_id: str) -> None:
        if hub.advertises(agent_id, "Reload"):
            await hub.call(agent_id, "Kontroller.Reload", {}, timeout=HOOK_TIMEOUT)

    hub.on_connect("Kaktus", kaktus)
    hub.on_connect("Kaktus", kaktus_pools)
    hub.on_connect("Kiwi", kiwi)
    hub.on_connect("Kontroller", kontroller)
