"""Hypervisors and network gateways: Kaktus (zone child) and Kiwi (region child).

Upstream schema v2 (collections `kaktus`, `kiwi`): a Kaktus keeps `costs.{cpu,memory}`,
`overcommit.{cpu,memory}`, `capabilities` (what its agent's `NodeCapabilities` answered) and the
`virtual_resources` derived from them; both keep the agents that manage them in `agent_ids`.
`maintenance` is ours (the 0.58 client's read-only flag): a Kaktus in maintenance keeps its
instances but is never chosen for new ones (`schedulable`).

Side effects go through collaborators in `Resources.extras` (set by the server, absent in an app
built without a hub): `compute` (kahuna.orchestrator.compute) fetches a new Kaktus's
capabilities when one of its agents is already connected; `dns` (kahuna.orchestrator.dns) sends
a Kiwi's newly listed (or unlisted) connected agents the full `Reload` of their DNS records.
"""

from __future__ import annotations

from typing import Any

from kahuna.logs import get_logger
from kahuna.resources.errors import Invalid, NotFoundError
from kahuna.resources.kind import Access, Hooks, Kind, Parent, base_fields, doc_value, register
from kahuna.resources.types import Bool, Field, Float, Int, ListOf, Obj, Ref, Str

log = get_logger("kahuna.resources")

Doc = dict[str, Any]
GiB = 1024 ** 3

COST = Obj(fields=(Field("price", Float(low=0.0), required=True),
                   Field("currency", Str(max_len=16), required=True)))


def zero_cost() -> Doc:
    return {"price": 0.0, "currency": ""}


async def check_agent_ids(res, ids: list[str] | None, agent_type: str, field: str = "agents") -> list[str]:
    """The listed agents, each checked to exist with the right type; duplicates dropped."""
    out: list[str] = []
    for i, agent_id in enumerate(ids or []):
        if agent_id in out:
            continue
        try:
            agent = await res.get("agent", agent_id)
        except NotFoundError:
            raise Invalid(f"{field}[{i}]: agent {agent_id} not found") from None
        if agent.get("type") != agent_type:
            raise Invalid(f"{field}[{i}]: agent {agent.get('name', agent_id)} is a "
                          f"{agent.get('type')} agent, not a {agent_type} one")
        out.append(agent_id)
    return out


async def listing_agent(res, kind: str, agent_id: str) -> list[Doc]:
    """Documents of `kind` whose `agent_ids` name `agent_id` (the store has no array lookups;
    these collections hold one document per machine or pool, so a scan is cheap)."""
    return [d for d in await res.list(kind) if agent_id in (d.get("agent_ids") or ())]


# ------------------------------------------------------------------------------------- Kaktus

EMPTY_CAPS: Doc = {"cpu": {"arch": "", "model": "", "vendor": "", "sockets": 0, "cores": 0,
                           "threads": 0},
                   "memory": 0}


def caps_from_node(reply: Any) -> Doc:
    """Kaktus.NodeCapabilities' reply (Go names) -> the stored `capabilities` (upstream's shape)."""
    if not isinstance(reply, dict):
        raise ValueError("NodeCapabilities reply is not an object")

    def number(key: str) -> int:
        value = reply.get(key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    def text(key: str) -> str:
        value = reply.get(key, "")
        return value if isinstance(value, str) else ""

    return {"cpu": {"arch": text("Arch"), "model": text("Model"), "vendor": text("Vendor"),
                    "sockets": number("Sockets"), "cores": number("Cores"), "threads": number("Threads")},
            "memory": number("Memory")}


def caps_of(doc: Doc) -> Doc:
    """The API's KaktusCaps: what was stored, or an all-zero object before the first scan."""
    caps = doc.get("capabilities") or {}
    cpu = {**EMPTY_CAPS["cpu"], **(caps.get("cpu") or {})}
    return {"cpu": cpu, "memory": caps.get("memory") or 0}


def virtual_resources(doc: Doc) -> Doc:
    """What a Kaktus offers once over-committed, and the unit prices (upstream's computation)."""
    caps = caps_of(doc)
    vcpus = caps["cpu"]["threads"] * (doc_value(doc, "overcommit.cpu") or 1)
    vmem_gb = caps["memory"] // GiB * (doc_value(doc, "overcommit.memory") or 1)

    def priced(count: int, cost_path: str) -> Doc:
        cost = doc_value(doc, cost_path) or zero_cost()
        return {"count": count, "price": cost["price"] / count if count else 0.0,
                "currency": cost.get("currency", "")}

    return {"vcpu": priced(vcpus, "costs.cpu"), "vmem_gb": priced(vmem_gb, "costs.memory")}


def schedulable(doc: Doc) -> bool:
    """May new instances be placed on this Kaktus? (never while in maintenance)"""
    return not doc.get("maintenance", False)


async def record_caps(res, agent_id: str, reply: Any, *, listed: list[Doc] | None = None) -> int:
    """Store a NodeCapabilities reply on every Kaktus listing `agent_id`; how many changed.

    `listed`: those Kaktus documents, read at or after the reply came (the connect hooks' batched
    read); one already holding these capabilities is left alone without taking its lock (a
    reconnect storm rewrites nothing); any other is re-read and written under its lock."""
    caps = caps_from_node(reply)
    changed = 0
    for kaktus in await listing_agent(res, "kaktus", agent_id) if listed is None else listed:
        if listed is not None and kaktus.get("capabilities") == caps:
            continue
        changed += await store_caps(res, kaktus["_id"], caps)
    return changed


async def store_caps(res, kaktus_id: str, caps: Doc, *, lock: bool = True) -> int:
    """Under the Kaktus's lock, so that a concurrent PUT does not write back stale caps
    (`lock=False` from an update hook, which runs under that lock already)."""
    if not lock:
        return await _store_caps(res, kaktus_id, caps)
    async with res.locks.hold(("kaktus", kaktus_id)):
        return await _store_caps(res, kaktus_id, caps)


async def _store_caps(res, kaktus_id: str, caps: Doc) -> int:
    try:
        doc = await res.get("kaktus", kaktus_id)
    except NotFoundError:
        return 0
    if doc.get("capabilities") == caps:  # a reconnect storm rewrites nothing
        return 0
    doc = {**doc, "capabilities": caps}
    await res.set_fields("kaktus", kaktus_id, {"capabilities": caps,
                                               "virtual_resources": virtual_resources(doc)})
    log.info("kaktus capabilities stored", kaktus=kaktus_id)
    return 1


async def set_maintenance(res, kaktus_id: str, enabled: bool) -> Doc:
    async with res.locks.hold(("kaktus", kaktus_id)):
        await res.get("kaktus", kaktus_id)
        doc = await res.set_fields("kaktus", kaktus_id, {"maintenance": enabled})
    log.info("kaktus maintenance", kaktus=kaktus_id, enabled=enabled)
    return doc


async def _kaktus_before_create(res, doc: Doc, **_: Any) -> None:
    doc["agent_ids"] = await check_agent_ids(res, doc.get("agent_ids"), "Kaktus")
    if not doc["agent_ids"]:
        raise Invalid("agents: a Kaktus needs at least one Kaktus agent")
    doc["maintenance"] = False
    doc["usage"] = {"vcpus": 0, "memory": 0, "instances": 0}
    doc["virtual_resources"] = virtual_resources(doc)


async def _kaktus_after_create(res, doc: Doc, **_: Any) -> None:
    await _refresh_caps_quietly(res, doc, lock=True)


async def _kaktus_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("agent_ids") != old.get("agent_ids"):
        new["agent_ids"] = await check_agent_ids(res, new.get("agent_ids"), "Kaktus")
        if not new["agent_ids"]:
            raise Invalid("agents: a Kaktus needs at least one Kaktus agent")
    new["virtual_resources"] = virtual_resources(new)


async def _kaktus_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("agent_ids") != old.get("agent_ids") and not new.get("capabilities"):
        await _refresh_caps_quietly(res, new, lock=False)  # the update holds the Kaktus's lock


async def _refresh_caps_quietly(res, doc: Doc, *, lock: bool) -> None:
    """Caps now if an agent is already online; otherwise (or on failure) at its next connect."""
    compute = res.extras.get("compute")
    if compute is not None:
        await compute.refresh_caps_quietly(res, doc, lock=lock)


KAKTUS = register(Kind(
    name="kaktus",
    plural="kaktuses",
    label="Kaktus",
    fields=base_fields() + (
        Field("cpu_cost", COST, default=zero_cost, db="costs.cpu"),
        Field("memory_cost", COST, default=zero_cost, db="costs.memory"),
        Field("overcommit_cpu_ratio", Int(low=1, high=1024), default=3, db="overcommit.cpu"),
        Field("overcommit_memory_ratio", Int(low=1, high=1024), default=2, db="overcommit.memory"),
        Field("agents", ListOf(item=Ref(kind="agent"), max_items=64), required=True, db="agent_ids"),
        Field("maintenance", Bool(), read_only=True, default=False),
    ),
    parent=Parent("zone", "zone_id"),
    access=Access(),  # superAdmin only: hypervisors are infrastructure
    hooks=Hooks(before_create=_kaktus_before_create, after_create=_kaktus_after_create,
                before_update=_kaktus_before_update, after_update=_kaktus_after_update),
))


# --------------------------------------------------------------------------------------- Kiwi

async def _kiwi_before_create(res, doc: Doc, **_: Any) -> None:
    doc["agent_ids"] = await check_agent_ids(res, doc.get("agent_ids"), "Kiwi")


async def _kiwi_after_create(res, doc: Doc, **_: Any) -> None:
    await _reload(res, doc.get("agent_ids") or [])


async def _kiwi_before_update(res, old: Doc, new: Doc, **_: Any) -> None:
    if new.get("agent_ids") != old.get("agent_ids"):
        new["agent_ids"] = await check_agent_ids(res, new.get("agent_ids"), "Kiwi")


async def _kiwi_after_update(res, old: Doc, new: Doc, **_: Any) -> None:
    before, after = old.get("agent_ids") or [], new.get("agent_ids") or []
    await _reload(res, [a for a in after if a not in before] + [a for a in before if a not in after])


async def _kiwi_after_delete(res, doc: Doc, **_: Any) -> None:
    dns = res.extras.get("dns")
    if dns is not None:  # the Kiwi is gone: its agents stop serving the region (best effort)
        await dns.reload_agents_quietly(res, doc.get("agent_ids") or [])


async def _reload(res, agent_ids: list[str]) -> None:
    """Agents newly listed (or no longer listed) and connected get the region's records now; a
    failure fails the request, which undoes the write."""
    dns = res.extras.get("dns")
    if agent_ids and dns is not None:
        await dns.reload_agents(res, agent_ids)


KIWI = register(Kind(
    name="kiwi",
    label="Kiwi",
    fields=base_fields() + (
        Field("agents", ListOf(item=Ref(kind="agent"), max_items=64), default=list, db="agent_ids"),
    ),
    parent=Parent("region", "region_id"),
    access=Access(),  # superAdmin only
    hooks=Hooks(before_create=_kiwi_before_create, after_create=_kiwi_after_create,
                before_update=_kiwi_before_update, after_update=_kiwi_after_update,
                after_delete=_kiwi_after_delete),
))
