"""Project quotas and usage: check-and-reserve, concurrency-safe, and the matching release.

Why a per-project lock around the check *and* the write (and nothing else, never an agent call):
two parallel creates must not both see the same free room. It is the project document's own lock
(`("project", id)`, held by a project update and by a tenant create's insert): a project update
replaces the whole document, and under another lock it could write back a stale `usage` read
before a concurrent reservation. So never call these while holding that lock (a tenant kind's
before_create hook): trio refuses the re-acquisition loudly rather than deadlocking.
The counters live on the project document (`usage {vcpus, memory, storage, instances}`, bytes
for memory/storage); a quota of 0 is unlimited (upstream). A refusal is a 507 naming the dimension, the limit and the usage.
Only positive requests are checked; a release never takes a counter below 0.

Held reservations (`reserve(..., hold=flow_id)`), for a flow that must record its step *before*
the counter moves: the delta and its marker `reservations.<hold>` are written in the same update
of the project document, and `settle(hold, keep=...)` ends it — keeping the usage (the work was
done) or giving it back — only if the marker is there. So a flow recovered after a crash settles
exactly what was reserved, whether the crash came before the reservation, after it, or after an
earlier settle: a bare `release` of the delta would give back what was never taken, or twice.
A hold id starts with its flow's id; a marker whose flow document is gone was kept (the flow
finished: an undone flow gives its holds back before its document goes), so the markers left by
flows that end without settling (a Kompute create's disks) are dropped at the next write of holds.
"""

from __future__ import annotations

from typing import Any

from kahuna.logs import get_logger
from kahuna.orchestrator.flows import COLLECTION as FLOWS
from kahuna.orchestrator.flows import register_undo
from kahuna.resources.errors import InsufficientResources, NotFoundError

log = get_logger("kahuna.quota")

DIMENSIONS = ("vcpus", "memory", "storage", "instances")
HOLDS = "reservations"  # project document: {hold id: {dimension: amount}} of unsettled holds


class QuotaExceeded(InsufficientResources):
    def __init__(self, dimension: str, limit: int, usage: int, requested: int):
        super().__init__(f"quota exceeded: {dimension} would be {usage + requested} "
                         f"(usage {usage} + {requested}), limit {limit}")
        self.dimension, self.limit, self.usage = dimension, limit, usage


def _lock(res, project_id: str):
    return res.locks.hold(("project", project_id))


def _usage(project: dict) -> dict[str, int]:
    usage = project.get("usage") or {}
    return {k: int(usage.get(k, 0) or 0) for k in DIMENSIONS}


async def _pending(res, project: dict) -> dict:
    """The project's holds whose flow is still stored (the others were kept: see above)."""
    holds = dict(project.get(HOLDS) or {})
    if not holds:
        return holds
    flows = await res.store.find(FLOWS, {"_id": {"$in": sorted({h[:24] for h in holds})}})
    stored = {f["_id"] for f in flows}
    return {h: d for h, d in holds.items() if h[:24] in stored}


async def reserve(res, project_id: str, *, hold: str = "", **delta: int) -> dict[str, int]:
    """Add `delta` to the project's usage if every positive part fits its quota; else 507.
    With `hold` (starting with the flow's id), the reservation is marked under that id (once: a
    second call with the same hold changes nothing) until `settle` ends it or its flow finishes."""
    async with _lock(res, project_id):
        project = await res.get("project", project_id)
        usage = _usage(project)
        holds = dict(project.get(HOLDS) or {})
        if hold and hold in holds:
            return usage
        if hold:
            holds = await _pending(res, project)
        quotas = project.get("quotas") or {}
        for dim, amount in delta.items():
            limit = int(quotas.get(dim, 0) or 0)
            if amount > 0 and limit > 0 and usage[dim] + amount > limit:
                raise QuotaExceeded(dim, limit, usage[dim], amount)
        for dim, amount in delta.items():
            usage[dim] = max(0, usage[dim] + amount)
        fields: dict[str, Any] = {"usage": usage}
        if hold:
            holds[hold] = {dim: int(amount) for dim, amount in delta.items()}
            fields[HOLDS] = holds
        await res.set_fields("project", project_id, fields)
        return usage


async def release(res, project_id: str, **delta: int) -> None:
    """Give back what `reserve` took (a project already gone has nothing to give back)."""
    async with _lock(res, project_id):
        try:
            project = await res.get("project", project_id)
        except NotFoundError:
            return
        usage = _usage(project)
        for dim, amount in delta.items():
            usage[dim] = max(0, usage[dim] - amount)
        await res.set_fields("project", project_id, {"usage": usage})


async def release_once(res, project_id: str, hold: str, **delta: int) -> None:
    """Give `delta` back exactly once per `hold` (starting with the flow's id): for a forward
    flow's step that a recovery may run again after a crash. The usage and the hold's marker move
    in one write of the project, so a second run changes nothing (a project already gone has
    nothing to give back)."""
    try:
        await reserve(res, project_id, hold=hold, **{dim: -int(amount) for dim, amount in delta.items()})
    except NotFoundError:
        return


async def settle(res, project_id: str, hold: str, *, keep: bool) -> bool:
    """End the reservation held under `hold`: keep its usage, or give it back. Idempotent: False
    (nothing changed) when there is no such hold (never taken, already settled, project gone)."""
    async with _lock(res, project_id):
        try:
            project = await res.get("project", project_id)
        except NotFoundError:
            return False
        holds = dict(project.get(HOLDS) or {})
        delta = holds.pop(hold, None)
        if delta is None:
            return False
        holds = await _pending(res, {HOLDS: holds})
        fields: dict[str, Any] = {HOLDS: holds}
        if not keep:
            usage = _usage(project)
            for dim, amount in delta.items():
                usage[dim] = max(0, usage[dim] - int(amount))
            fields["usage"] = usage
        await res.set_fields("project", project_id, fields)
        return True


async def _undo_hold(res, data: dict) -> None:
    await settle(res, data["project_id"], data["hold"], keep=False)


async def _undo_reserve(res, data: dict) -> None:
    await release(res, data["project_id"], **data.get("delta", {}))


register_undo("project.usage", _undo_reserve)
register_undo("project.hold", _undo_hold)
