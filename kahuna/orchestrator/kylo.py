"""Kylo side effects on the Kaktus agents of the NFS storage's pool (upstream's parameters).

Create is a flow of steps, each with its undo; a failing step undoes the ones before it, in
reverse order, shielded (so a share never exists without its export, nor a subvolume without a
share):
    ListFileSystems{}                    the NFS storage's `fs` must be listed (else 422)
    ListFsSubVolumes{FS}                 the name must not be taken (else 422)
    CreateFsSubVolume{FS, SubVolume}     -> {Path, BytesUsed}      undo: DeleteFsSubVolume
    CreateNfsBackends{ID, Name, FS, Path, Access, Protocols, Clients, Backends, Port}
                                                                    undo: DeleteNfsBackends{ID}
Update sends `UpdateNfsBackends` with the same parameters; delete `DeleteNfsBackends` then
`DeleteFsSubVolume`. After a step timed out, the undo waits one call timeout first (the agent
may still carry it out late). Agent errors are the request's errors (502/503/504, agent_calls): upstream
logged and ignored them, leaving shares without exports. The steps are plain (method, params,
undo) triples so that the durable flow engine (kahuna.orchestrator.flows) can run them as is.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass
from typing import Any

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator.agent_calls import AgentCalls, AgentTimedOut
from kahuna.resources.errors import ConflictError, DomainError, Invalid
from kahuna.resources.semantic import Unprocessable

log = get_logger("kahuna.kylo")

Doc = dict[str, Any]
UNDO_TIMEOUT = 30.0
MAX_LATE_GRACE = 30.0  # how long an undo waits after a timed-out step (at most one call timeout)
EXPORT_IDS = range(100, 65001)  # upstream's export id range


@dataclass
class Share:
    """What the flow needs about the share being made (the stored document comes after)."""

    name: str
    fs: str
    access: str
    protocols: list[int]
    clients: list[str]
    backends: list[str]
    port: int
    export_id: int = 0
    path: str = ""
    size: int = 0


def export_params(share: Share) -> dict:
    return {"ID": share.export_id, "Name": share.name, "FS": share.fs, "Path": share.path,
            "Access": share.access, "Protocols": list(share.protocols), "Clients": list(share.clients),
            "Backends": list(share.backends), "Port": share.port}


def new_export_id(taken: set[int]) -> int:
    free = len(EXPORT_IDS) - len(taken)
    if free <= 0:
        raise ConflictError("no free NFS export id left on this NFS storage")
    while True:
        candidate = EXPORT_IDS[_random.randbelow(len(EXPORT_IDS))]
        if candidate not in taken:
            return candidate


class KyloEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)

    async def _pool_agents(self, res, nfs: Doc) -> tuple[list[str], str]:
        pool = await res.get("pool", nfs["storage_pool_id"])
        return list(pool.get("agent_ids") or ()), f"storage pool {pool.get('name')}"

    async def create(self, res, nfs: Doc, share: Share) -> Share:
        agents, what = await self._pool_agents(res, nfs)
        agent, listed = await self.calls.call_one(agents, "ListFileSystems", {}, what)
        if share.fs not in ((listed or {}).get("FS") or []):
            raise Unprocessable(f"NFS storage {nfs.get('name')}: file system {share.fs} is not served by "
                          f"its pool's Ceph cluster")
        _, subs = await self.calls.call_one(agents, "ListFsSubVolumes", {"FS": share.fs}, what)
        if share.name in ((subs or {}).get("SubVolumes") or []):
            raise Unprocessable(f"a subvolume {share.name} already exists on file system {share.fs}")
        undo: list[tuple[str, dict]] = []
        try:
            _, made = await self.calls.call_one(agents, "CreateFsSubVolume",
                                                {"FS": share.fs, "SubVolume": share.name}, what)
            undo.append(("DeleteFsSubVolume", {"FS": share.fs, "SubVolume": share.name}))
            share.path = str((made or {}).get("Path") or "")
            share.size = int((made or {}).get("BytesUsed") or 0)
            if not share.path:
                raise Invalid(f"CreateFsSubVolume answered no path for {share.name}")
            # a timed-out create may still have happened on the agent: undo it too
            undo.append(("DeleteNfsBackends", export_params(share)))
            await self.calls.call_one(agents, "CreateNfsBackends", export_params(share), what)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if isinstance(exc, AgentTimedOut):
                    # the agent may still carry the call out: let a late answer land first, or
                    # the undo would run before it and the export would outlive its share
                    await trio.sleep(self._late_grace())
                await self._undo(agents, what, undo)
            raise
        log.info("kylo exported", name=share.name, export=share.export_id, clients=share.clients)
        return share

    def _late_grace(self) -> float:
        settings = getattr(self.calls.hub, "settings", None)
        return min(float(getattr(settings, "call_timeout", 0.0) or 0.0), MAX_LATE_GRACE)

    async def update(self, res, nfs: Doc, share: Share) -> None:
        agents, what = await self._pool_agents(res, nfs)
        await self.calls.call_one(agents, "UpdateNfsBackends", export_params(share), what)

    async def delete(self, res, nfs: Doc, share: Share) -> None:
        agents, what = await self._pool_agents(res, nfs)
        await self.calls.call_one(agents, "DeleteNfsBackends", export_params(share), what)
        await self.calls.call_one(agents, "DeleteFsSubVolume", {"FS": share.fs, "SubVolume": share.name}, what)

    async def _undo(self, agents: list[str], what: str, steps: list[tuple[str, dict]]) -> None:
        for method, params in reversed(steps):
            try:
                with trio.fail_after(UNDO_TIMEOUT):
                    await self.calls.call_one(agents, method, params, what, timeout=UNDO_TIMEOUT)
            except (DomainError, trio.TooSlowError) as exc:
                log.error("kylo undo failed: left on the agent", method=method,
                          error=getattr(exc, "reason", "timed out"))
