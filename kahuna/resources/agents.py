"""Remote agents (upstream collection `agent`): Kaktus hypervisors, Kiwi gateways, Kontroller
appliances. An agent's credential is a token document (`kahuna.auth.apikeys`); the agent hub
authenticates it from memory (`kahuna.orchestrator.agent_credentials`)."""

from kahuna.resources.errors import ConflictError
from kahuna.resources.kind import Hooks, Kind, all_kinds, base_fields, doc_value, register
from kahuna.resources.types import Enum, Field, ListOf, Ref

AGENT_TYPES = ("Kaktus", "Kiwi", "Kontroller")



async def _forget_agent(ctx, doc, **_):
    """Its key goes and its live session closes (`agent_keys` is an AgentKeys, when wired)."""
    keys = ctx.extras.get("agent_keys")
    if keys is not None:
        await keys.forget(doc["_id"])


def _holders_of_agents() -> list[tuple[Kind, str]]:
    """Kinds with an `agents` list of agent ids (Kaktus, storage pools, Kiwis …), and its key."""
    out = []
    for kind in all_kinds():
        for f in kind.fields:
            if isinstance(f.type, ListOf) and isinstance(f.type.item, Ref) and f.type.item.kind == "agent":
                out.append((kind, f.doc_key))
    return out


async def _refuse_if_listed(ctx, doc, **_):
    """An agent named in some `agents` list would leave a dangling id behind: 409 naming them,
    as a parent with children is refused."""
    holders = []
    for kind, key in _holders_of_agents():
        for held in await ctx.store.find(kind.collection):
            if doc["_id"] in (doc_value(held, key) or ()):
                holders.append(f"{kind.label} {held.get('name', held['_id'])}")
    if holders:
        raise ConflictError(f"agent {doc.get('name', doc['_id'])} is still listed by {', '.join(sorted(holders))}")


AGENT = register(Kind(
    name="agent",
    fields=base_fields() + (
        # the client's AgentUpdate has no `type`: set at creation, never changed (400 if tried)
        Field("type", Enum(choices=AGENT_TYPES), required=True, immutable=True),
    ),
    indexed=("type",),
    hooks=Hooks(before_delete=_refuse_if_listed, after_delete=_forget_agent),
))
