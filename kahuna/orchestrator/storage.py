"""Storage side effects on the pools' Kaktus agents: template images, pool statistics.

- Templates: `CreateTemplateVolume` on one eligible agent of the pool (random among its connected
  agents that advertise the method); the size it reports is stored on the template. When the
  agent fails or times out, the error reaches the API client (kahuna.orchestrator.agent_calls)
  and the template document is removed again by the service. When the image was created but the
  template cannot be kept, the image is deleted at once; when it may still be created (the call
  timed out, or the request went away mid-call), a background task keeps deleting it until it
  has gone, for up to `LATE_CLEANUP_SECONDS` (under the pool's lock, and only while no template
  of the pool uses that image name, so that a retry's image is never touched).
  Deleting a template deletes its image first (`DeleteVolume`, with its snapshots); an image
  that is already gone counts as deleted.
- Pool statistics (`GetStoragePoolStats` -> capacity, allocation, available): refreshed when a
  Kaktus agent listed on the pool connects, when a pool is created or its agents change, and
  every `REFRESH_SECONDS` by `refresh_loop` (a background task of the server). A refresh never
  fails a request: the statistics are informative, the next refresh catches up.
"""

from __future__ import annotations

from typing import Any

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator.agent_calls import AgentCalls, AgentFailed
from kahuna.resources.compute import listing_agent
from kahuna.resources.errors import DomainError
from kahuna.resources.storage import POOL, TEMPLATE, template_volume

log = get_logger("kahuna.storage")

REFRESH_SECONDS = 300.0
QUIET_TIMEOUT = 15.0  # bound on a best-effort call made inside a request
COMPENSATE_TIMEOUT = 30.0
LATE_CLEANUP_SECONDS = 3600.0  # upstream's longest agent call
LATE_CLEANUP_MAX_PAUSE = 60.0
ENOENT = "ret=-2,"  # librbd's "No such file or directory", as Kaktus reports it

Doc = dict[str, Any]


def pool_label(pool: Doc) -> str:
    """A storage pool as agent-call errors name it (503 "no eligible agent for storage pool x")."""
    return f"storage pool {pool.get('name', pool['_id'])}"


class StorageEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)
        self._nursery: trio.Nursery | None = None  # set while `run` runs (the server's background)

    async def run(self, res, interval: float = REFRESH_SECONDS, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Background task: late image clean-ups, and every pool's statistics every `interval`."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                await self.refresh_loop(res, interval)
            finally:
                self._nursery = None

    # ------------------------------------------------------------------------------ templates

    async def create_template_volume(self, res, pool: Doc, template: Doc) -> int:
        """Create the template's image; store and answer its size. Raises the API error."""
        volume = template_volume(template)
        params = {"Pool": pool["libvirt_pool"], "Volume": volume, "SourceURL": template["source_url"]}
        agent_id = self.calls.pick(pool.get("agent_ids") or (), "CreateTemplateVolume", pool_label(pool))
        image = "none"  # none -> maybe (call in flight) -> made
        try:
            image = "maybe"
            try:
                reply = await self.calls.call(agent_id, "CreateTemplateVolume", params)
            except DomainError as exc:
                if exc.status != 504:  # the agent said no, or is gone: no image
                    image = "none"
                raise
            image = "made"
            size = reply.get("Size") if isinstance(reply, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise AgentFailed(f"agent {agent_id}: CreateTemplateVolume answered no size: {reply!r}")
            await res.set_fields(TEMPLATE, template["_id"], {"size": size})
        except BaseException:
            with trio.CancelScope(shield=True):
                if image == "made":
                    await self._forget_volume(pool, volume)
                elif image == "maybe":
                    await self._forget_volume_later(res, pool, volume)
            raise
        log.info("template volume created", template=template["_id"], pool=pool["_id"],
                 agent=agent_id, size=size)
        return size

    async def delete_template_volume(self, res, pool: Doc, template: Doc) -> None:
        volume = template_volume(template)
        params = {"Pool": pool["libvirt_pool"], "Volume": volume, "WithSnapshots": True}
        agent_id = self.calls.pick(pool.get("agent_ids") or (), "DeleteVolume", pool_label(pool))
        try:
            await self.calls.call(agent_id, "DeleteVolume", params)
        except AgentFailed as exc:
            if ENOENT not in exc.reason:
                raise
            log.info("template volume already gone", template=template["_id"], volume=volume)
        log.info("template volume deleted", template=template["_id"], pool=pool["_id"], agent=agent_id)

    async def _forget_volume(self, pool: Doc, volume: str) -> bool:
        """Best effort: delete an image whose template will not exist. True when it is gone
        (deleted now), False when it is not there (yet) or could not be deleted."""
        params = {"Pool": pool["libvirt_pool"], "Volume": volume, "WithSnapshots": True}
        try:
            with trio.fail_after(COMPENSATE_TIMEOUT):
                await self.calls.call_one(pool.get("agent_ids") or (), "DeleteVolume", params,
                                          pool_label(pool), timeout=COMPENSATE_TIMEOUT)
        except (DomainError, trio.TooSlowError) as exc:
            reason = getattr(exc, "reason", "timed out")
            if ENOENT not in reason:
                log.warning("orphan template volume not deleted", pool=pool["_id"], volume=volume,
                            error=reason)
            return False
        log.info("orphan template volume deleted", pool=pool["_id"], volume=volume)
        return True

    async def _forget_volume_later(self, res, pool: Doc, volume: str) -> None:
        if self._nursery is None:  # no background task (an app without the server): once, now
            await self._forget_volume(pool, volume)
            return
        self._nursery.start_soon(self._forget_later, res, pool, volume)

    async def _forget_later(self, res, pool: Doc, volume: str) -> None:
        """Delete an image that an agent may still be creating, once it exists (see above)."""
        pause, deadline = 0.5, trio.current_time() + LATE_CLEANUP_SECONDS
        while trio.current_time() < deadline:
            await trio.sleep(pause)
            pause = min(pause * 2, LATE_CLEANUP_MAX_PAUSE)
            async with res.locks.hold((POOL.name, pool["_id"])):
                if await res.count(TEMPLATE, storage_pool_id=pool["_id"], volume_name=volume):
                    log.info("late template volume kept: a template uses it now", pool=pool["_id"],
                             volume=volume)
                    return
                if await self._forget_volume(pool, volume):
                    return
        log.warning("late template volume clean-up gave up", pool=pool["_id"], volume=volume)

    # ----------------------------------------------------------------------------- statistics

    async def refresh_pool(self, res, pool: Doc, agent_id: str | None = None) -> Doc:
        """Ask one agent (`agent_id`, or an eligible one) for the pool's statistics; store them."""
        params = {"Pool": pool["libvirt_pool"]}
        if agent_id is None:
            _, reply = await self.calls.call_one(pool.get("agent_ids") or (), "GetStoragePoolStats",
                                                 params, pool_label(pool))
        else:
            reply = await self.calls.call(agent_id, "GetStoragePoolStats", params)
        stats = {"capacity": _size(reply, "Capacity"), "allocation": _size(reply, "Allocated"),
                 "available": _size(reply, "Available")}
        if any(pool.get(k) != v for k, v in stats.items()):
            await res.set_fields(POOL, pool["_id"], stats)
            log.info("storage pool statistics", pool=pool["_id"], **stats)
        return stats

    async def refresh_pool_quietly(self, res, pool: Doc) -> None:
        """Inside a request: bounded, and failures are only logged."""
        if not self.calls.eligible(pool.get("agent_ids") or (), "GetStoragePoolStats"):
            return
        try:
            with trio.fail_after(QUIET_TIMEOUT):
                await self.refresh_pool(res, pool)
        except (DomainError, trio.TooSlowError) as exc:
            log.warning("storage pool statistics not refreshed", pool=pool["_id"],
                        error=getattr(exc, "reason", "timed out"))

    async def on_agent_connect(self, res, agent_id: str, *, pools: list[Doc] | None = None) -> None:
        """Connect hook of Kaktus agents: every pool listing the agent, through that agent
        (`pools`: those pools, read by the caller -- the connect hooks' batched read)."""
        for pool in await listing_agent(res, POOL.name, agent_id) if pools is None else pools:
            try:
                await self.refresh_pool(res, pool, agent_id)
            except DomainError as exc:
                log.warning("storage pool statistics not refreshed", pool=pool["_id"], error=exc.reason)

    async def refresh_all(self, res) -> int:
        refreshed = 0
        for pool in await res.list(POOL):
            if not self.calls.eligible(pool.get("agent_ids") or (), "GetStoragePoolStats"):
                continue
            try:
                await self.refresh_pool(res, pool)
                refreshed += 1
            except DomainError as exc:
                log.warning("storage pool statistics not refreshed", pool=pool["_id"], error=exc.reason)
        return refreshed

    async def refresh_loop(self, res, interval: float = REFRESH_SECONDS, *,
                           task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Background task: every pool's statistics, every `interval` seconds."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh_all(res)
            except Exception as exc:  # e.g. the database is briefly away: try again next time
                log.warning("storage pool refresh failed", error=str(exc))


def _size(reply: Any, key: str) -> int:
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AgentFailed(f"GetStoragePoolStats answered no {key}: {reply!r}")
    return value
