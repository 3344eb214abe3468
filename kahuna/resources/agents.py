"""Remote agents (upstream collection `agent`): Kaktus hypervisors, Kiwi gateways, Kontroller
appliances. An agent's credential is a token document (`kahuna.auth.apikeys`); the agent hub
authenticates it from memory (`kahuna.orchestrator.agent_credentials`)."""

from kahuna.resources.kind import Hooks, Kind, base_fields, register
from kahuna.resources.types import Enum, Field

AGENT_TYPES = ("Kaktus", "Kiwi", "Kontroller")



async def _forget_agent(ctx, doc, **_):
    """Its key goes and its live session closes (`agent_keys` is an AgentKeys, when wired)."""
    keys = ctx.extras.get("agent_keys")
    if keys is not None:
        await keys.forget(doc["_id"])


AGENT = register(Kind(
    name="agent",
    fields=base_fields() + (
        # the client's AgentUpdate has no `type`: set at creation, never changed (400 if tried)
        Field("type", Enum(choices=AGENT_TYPES), required=True, immutable=True),
    ),
    indexed=("type",),
    hooks=Hooks(after_delete=_forget_agent),
))
