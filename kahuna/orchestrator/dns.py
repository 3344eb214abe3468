"""DNS side effects on Kiwi agents: region records pushed one by one, and full reloads.

The agents of a region's DNS are those listed on the region's Kiwis. A record write goes to
every one of them that is connected (`CreateDnsRecord`, `UpdateDnsRecord`, `DeleteDnsRecord`);
one that is offline catches up with the full `Reload` it gets when it connects. So:
- when the region has no Kiwi agent at all, there is nobody to tell and the write just happens;
- when it has some but none is connected, the write is refused (503, no eligible agent) rather
  than accepted into a DNS that nobody serves;
- when an agent fails or times out, the agents already told are told the opposite (best effort)
  and the error reaches the client (502/504, kahuna.orchestrator.agent_calls); the service then
  undoes the write. An agent that timed out may still apply the change after that: it serves it
  until its next `Reload` (its next connection, or a change of its Kiwi's agent list).

`Reload` carries, for every region whose Kiwis list the agent, the region's domain and records.
It runs under the record kind's write lock, so it never interleaves with a record push.
"""

from __future__ import annotations

from typing import Any

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator.agent_calls import AgentCalls, NoAgent
from kahuna.orchestrator.flows import register_undo
from kahuna.resources.compute import listing_agent
from kahuna.resources.dns import RECORD
from kahuna.resources.errors import DomainError

log = get_logger("kahuna.dns")

UNDO_TIMEOUT = 30.0

Doc = dict[str, Any]
Step = tuple[str, dict]  # (method, params)


def _create(doc: Doc) -> Step:
    return "CreateDnsRecord", {"Domain": doc["domain"], "Entry": doc["name"],
                               "Addresses": list(doc.get("addresses") or [])}


def _update(doc: Doc) -> Step:
    return "UpdateDnsRecord", {"Domain": doc["domain"], "Entry": doc["name"],
                               "Addresses": list(doc.get("addresses") or [])}


def _delete(doc: Doc) -> Step:
    return "DeleteDnsRecord", {"Domain": doc["domain"], "Entry": doc["name"]}


class DnsEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)

    # ------------------------------------------------------------------------------- records

    async def record_created(self, res, doc: Doc) -> None:
        await self._push(res, doc, [_create(doc)], [_delete(doc)])

    async def record_updated(self, res, old: Doc, new: Doc) -> None:
        if old["name"] == new["name"]:
            await self._push(res, new, [_update(new)], [_update(old)])
        else:  # a rename: the old key goes (upstream kept updating the old key)
            await self._push(res, new, [_delete(old), _create(new)],
                             [_delete(new), _create(old)])

    async def record_deleting(self, res, doc: Doc) -> None:
        await self._push(res, doc, [_delete(doc)], [_create(doc)])

    async def region_agents(self, res, region_id: str) -> list[str]:
        agents: list[str] = []
        for kiwi in await res.list("kiwi", region_id):
            agents.extend(a for a in kiwi.get("agent_ids") or () if a not in agents)
        return agents

    async def record_agents(self, res, doc: Doc) -> list[str]:
        """The Kiwi agents serving a record: its region's, or, for a project's record, those of
        the project's regions only (upstream pushed to every Kiwi of every region)."""
        if not doc.get("project_id"):
            return await self.region_agents(res, doc["region_id"])
        try:
            project = await res.get("project", doc["project_id"])
        except DomainError:
            return []
        agents: list[str] = []
        for region_id in project.get("region_ids") or ():
            try:
                listed = await self.region_agents(res, region_id)
            except DomainError:  # a region removed meanwhile
                continue
            agents.extend(a for a in listed if a not in agents)
        return agents

    async def _push(self, res, doc: Doc, steps: list[Step], undo: list[Step]) -> None:
        region_id = doc.get("region_id") or f"project {doc.get('project_id')}"
        listed = await self.record_agents(res, doc)
        if not listed:
            return
        methods = {method for method, _ in steps}
        targets = [a for a in listed if all(a in self.calls.eligible([a], m) for m in methods)]
        if not targets:
            raise NoAgent(f"no eligible agent: none of the {len(listed)} Kiwi agent(s) of the region "
                          f"is connected with {', '.join(sorted(methods))}")
        done: list[str] = []
        try:
            for agent_id in targets:
                for method, params in steps:
                    await self.calls.call(agent_id, method, params)
                done.append(agent_id)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._undo(done, undo)
            raise
        log.info("dns pushed", region=region_id, agents=len(done), steps=[m for m, _ in steps])

    async def _undo(self, agents: list[str], steps: list[Step]) -> None:
        for agent_id in agents:
            try:
                with trio.fail_after(UNDO_TIMEOUT):
                    for method, params in steps:
                        await self.calls.call(agent_id, method, params, timeout=UNDO_TIMEOUT)
            except (DomainError, trio.TooSlowError) as exc:
                log.warning("dns undo failed; the agent catches up at its next reload",
                            agent=agent_id, error=getattr(exc, "reason", "timed out"))

    # ------------------------------------------------------------------------------- reloads

    async def reload_domains(self, res, agent_id: str) -> list[dict]:
        """`Kiwi.Reload`'s Domains for one agent: the regions whose Kiwis list it."""
        regions: list[str] = []
        for kiwi in await listing_agent(res, "kiwi", agent_id):
            if kiwi["region_id"] not in regions:
                regions.append(kiwi["region_id"])
        domains = []
        for region_id in regions:
            try:
                region = await res.get("region", region_id)
            except DomainError:
                continue
            if not region.get("domain"):
                continue
            records = [{"Name": r["name"], "Type": "A", "Addresses": list(r.get("addresses") or [])}
                       for r in await res.list(RECORD, region_id)]
            domains.append({"Name": region["domain"], "Records": records})
        domains.extend(await self._project_domains(res, set(regions)))
        return _merged(domains)

    async def _project_domains(self, res, regions: set[str]) -> list[dict]:
        """The domains of the projects present in these regions, each with its records and its
        instances' records (`Kiwi.Reload` must carry them, or a reconnect loses them)."""
        out = []
        for project in await res.list("project"):
            if not project.get("domain") or not regions.intersection(project.get("region_ids") or ()):
                continue
            records = [{"Name": r["name"], "Type": "A", "Addresses": list(r.get("addresses") or [])}
                       for r in await res.list(RECORD, project_id=project["_id"])]
            records.extend(await _instance_records(res, project["_id"]))
            out.append({"Name": project["domain"], "Records": records})
        return out

    async def reload_agent(self, res, agent_id: str, timeout: float | None = None) -> int:
        """Send one agent its full DNS state; how many domains. Raises the API errors."""
        async with res.kind_lock(RECORD):
            domains = await self.reload_domains(res, agent_id)
            await self.calls.call(agent_id, "Reload", {"Domains": domains}, timeout)
        log.info("kiwi reloaded", agent=agent_id, domains=len(domains),
                 records=sum(len(d["Records"]) for d in domains))
        return len(domains)

    async def reload_agents(self, res, agent_ids: list[str]) -> None:
        """After a Kiwi's agents changed: those connected reload now (the others when they
        connect). A failure is the request's failure."""
        for agent_id in self.calls.eligible(agent_ids, "Reload"):
            await self.reload_agent(res, agent_id)

    async def region_domain_changed(self, res, region: Doc) -> None:
        """A region's records move to its new domain, and its Kiwi agents reload: the old
        domain's zone goes, the new one comes. Quiet: an agent that fails catches up when it
        reconnects; the region's change stands."""
        async with res.kind_lock(RECORD):
            for record in await res.list(RECORD, region["_id"]):
                if record.get("domain") != region.get("domain"):
                    await res.set_fields(RECORD, record["_id"], {"domain": region.get("domain") or ""})
        await self.reload_agents_quietly(res, await self.region_agents(res, region["_id"]))

    async def reload_agents_quietly(self, res, agent_ids: list[str]) -> None:
        for agent_id in self.calls.eligible(agent_ids, "Reload"):
            try:
                await self.reload_agent(res, agent_id)
            except DomainError as exc:
                log.warning("kiwi not reloaded", agent=agent_id, error=exc.reason)


async def instance_record_created(res, *, region_id: str, domain: str, name: str, addresses: list[str]) -> None:
    """An instance's A record `name.<domain>` on the region's Kiwi agents (raises like a record
    push: 503 when the region has Kiwi agents but none connected, the agent's 502/504)."""
    doc = {"region_id": region_id, "domain": domain, "name": name, "addresses": list(addresses)}
    effects = DnsEffects(res.extras.get("hub"))
    async with res.kind_lock(RECORD):  # never between a Reload's reading and its sending
        await effects._push(res, doc, [_create(doc)], [_delete(doc)])


async def instance_record_deleted(res, *, region_id: str, domain: str, name: str) -> None:
    """Remove an instance's A record from the region's connected Kiwi agents; quiet (an agent
    away or failing is logged: its next Reload, which no longer carries the instance, fixes it)."""
    effects = DnsEffects(res.extras.get("hub"))
    method, params = _delete({"domain": domain, "name": name})
    async with res.kind_lock(RECORD):
        try:
            agents = effects.calls.eligible(await effects.region_agents(res, region_id), method)
        except DomainError:  # the region is gone, its Kiwis with it
            return
        for agent_id in agents:
            try:
                with trio.fail_after(UNDO_TIMEOUT):
                    await effects.calls.call(agent_id, method, params, timeout=UNDO_TIMEOUT)
            except (DomainError, trio.TooSlowError) as exc:
                log.warning("instance record not removed; the agent catches up at its next reload",
                            agent=agent_id, error=getattr(exc, "reason", "timed out"))


async def _undo_instance_record(res, data: Doc) -> None:
    await instance_record_deleted(res, region_id=data["region_id"], domain=data["domain"], name=data["name"])


register_undo("dns.instance", _undo_instance_record)


def _merged(domains: list[dict]) -> list[dict]:
    """One entry per domain name (a project may share its region's domain)."""
    out: dict[str, dict] = {}
    for domain in domains:
        key = domain["Name"].strip().rstrip(".").lower()
        if key in out:
            out[key]["Records"].extend(domain["Records"])
        else:
            out[key] = {"Name": domain["Name"], "Records": list(domain["Records"])}
    return list(out.values())


async def _instance_records(res, project_id: str) -> list[dict]:
    """A records of the project's instances (name -> private address, upstream's instance
    records), when the instance kind exists (compute): `project_id`, `name`, `local_ip`."""
    try:
        docs = await res.list("instance", project_id=project_id)
    except (KeyError, DomainError):
        return []
    out = []
    for doc in docs:
        addresses = [doc["local_ip"]] if doc.get("local_ip") else []
        if doc.get("name") and addresses:
            out.append({"Name": doc["name"], "Type": "A", "Addresses": addresses})
    return out
