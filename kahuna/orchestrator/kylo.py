"""Kylo side effects on the Kaktus agents of the NFS storage's pool (upstream's parameters).

Create is a durable flow (kahuna.orchestrator.flows) of steps, each with a named, idempotent
undo; a failing step, a cancelled request or a crash undoes the ones made, in reverse, shielded
(so a share never exists without its export, nor a subvolume without a share):
    ListFileSystems{}                    the NFS storage's `fs` must be listed (else 422)
    ListFsSubVolumes{FS}                 the name must not be taken (else 422)
    CreateFsSubVolume{FS, SubVolume}     -> {Path, BytesUsed}      undo: DeleteFsSubVolume
    CreateNfsBackends{ID, Name, FS, Path, Access, Protocols, Clients, Backends, Port}
                                                                    undo: DeleteNfsBackends{ID}
Update sends `UpdateNfsBackends` with the same parameters; delete `DeleteNfsBackends` then
`DeleteFsSubVolume`. The stored document is the flow's last step. After a step timed out, the
undo waits one call timeout first (the agent may still carry the call out late). Agent errors
are the request's errors (502/503/504, agent_calls): upstream logged and ignored them, leaving
shares without exports.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator import flows
from kahuna.orchestrator.agent_calls import AgentCalls, AgentFailed, AgentTimedOut, NoAgent
from kahuna.resources.errors import ConflictError, Invalid, NotFoundError
from kahuna.store.base import delete_if_present
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
    doc_id: str = ""


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

    async def create(self, res, nfs: Doc, share: Share, store: Callable[[Share], Awaitable[None]]) -> Share:
        """Check, then make the subvolume, the export and (`store`) the document, as one durable
        flow: a failure, a cancellation or a crash (replayed by flows.recover at start) undoes
        the steps made, in reverse."""
        agents, what = await self._pool_agents(res, nfs)
        agent, listed = await self.calls.call_one(agents, "ListFileSystems", {}, what)
        if share.fs not in ((listed or {}).get("FS") or []):
            raise Unprocessable(f"NFS storage {nfs.get('name')}: file system {share.fs} is not served by "
                                f"its pool's Ceph cluster")
        _, subs = await self.calls.call_one(agents, "ListFsSubVolumes", {"FS": share.fs}, what)
        if share.name in ((subs or {}).get("SubVolumes") or []):
            raise Unprocessable(f"a subvolume {share.name} already exists on file system {share.fs}")
        nfs_id = nfs["_id"]

        async def subvolume():
            _, made = await self.calls.call_one(agents, "CreateFsSubVolume",
                                                {"FS": share.fs, "SubVolume": share.name}, what)
            share.path = str((made or {}).get("Path") or "")
            share.size = int((made or {}).get("BytesUsed") or 0)
            if not share.path:
                raise Invalid(f"CreateFsSubVolume answered no path for {share.name}")

        async def export():
            await self.calls.call_one(agents, "CreateNfsBackends", export_params(share), what)

        async with flows.Flow(res, "kylo.create", share.name) as flow:
            try:
                await flow.step("subvolume", subvolume, undo="kylo.subvolume",
                                data={"nfs_id": nfs_id, "fs": share.fs, "subvolume": share.name})
                # recorded before the call: a timed-out create may still happen on the agent
                await flow.step("export", export, undo="kylo.export",
                                data={"nfs_id": nfs_id, "export": export_params(share)})
                await flow.step("document", lambda: store(share), undo="kylo.document",
                                data={"id": share.doc_id})
            except AgentTimedOut:
                # the agent may still carry the call out: let a late answer land before the
                # undo, or the export would outlive its share
                with trio.CancelScope(shield=True):
                    await trio.sleep(self._late_grace())
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
        try:
            await self.calls.call_one(agents, "DeleteFsSubVolume", {"FS": share.fs, "SubVolume": share.name}, what)
        except AgentFailed as exc:
            if not _already_gone(exc):
                raise
            log.warning("kylo subvolume already gone", name=share.name, fs=share.fs)


def _already_gone(exc: AgentFailed) -> bool:
    """Ceph's words for a subvolume that is not there (deleting it again is then done)."""
    return "ENOENT" in exc.reason or "does not exist" in exc.reason


def effects_of(res) -> KyloEffects:
    effects = res.extras.get("kylo")
    if effects is None:
        hub = res.extras.get("hub")
        if hub is None:
            raise NoAgent("no eligible agent: this server runs without its agent hub")
        effects = res.extras.setdefault("kylo", KyloEffects(hub))
    return effects


async def _nfs_agents(res, nfs_id: str) -> tuple[KyloEffects, list[str], str] | None:
    try:
        nfs = await res.get("nfs", nfs_id)
    except NotFoundError:
        return None  # the NFS storage went: nothing left to call
    effects = effects_of(res)
    agents, what = await effects._pool_agents(res, nfs)
    return effects, agents, what


@flows.undo("kylo.subvolume")
async def _undo_subvolume(res, data: dict) -> None:
    """Idempotent: a subvolume already gone counts as deleted."""
    found = await _nfs_agents(res, data["nfs_id"])
    if found is None:
        return
    effects, agents, what = found
    try:
        await effects.calls.call_one(agents, "DeleteFsSubVolume", {"FS": data["fs"], "SubVolume": data["subvolume"]},
                                     what, timeout=UNDO_TIMEOUT)
    except AgentFailed as exc:
        if not _already_gone(exc):
            raise


@flows.undo("kylo.export")
async def _undo_export(res, data: dict) -> None:
    found = await _nfs_agents(res, data["nfs_id"])
    if found is None:
        return
    effects, agents, what = found
    await effects.calls.call_one(agents, "DeleteNfsBackends", data["export"], what, timeout=UNDO_TIMEOUT)


@flows.undo("kylo.document")
async def _undo_document(res, data: dict) -> None:
    await delete_if_present(res.store, "kylo", data["id"])
