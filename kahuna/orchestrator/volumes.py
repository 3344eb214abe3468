"""Volume side effects on the pool's Kaktus agents, as durable flows (kahuna.orchestrator.flows).

Create: the document is already inserted by the service; the flow records it (undo: delete the
document), records then reserves the storage quota as a hold of the flow (undo: give it back if
it was taken, kahuna.resources.quota: a crash between the two writes can neither leave the size
counted for an undone volume nor give back what was never taken), then records the image
*before* asking an agent of the pool for it (undo: `DeleteVolume`, an image already gone counts
as deleted) — so a failure, a cancelled request or a SIGKILL at any point leaves no image, no
document, no usage.

Resize (grow; a shrink is refused before, 422) is a forward flow `volume.resize` whose plan (the
volume, its pool and image, the old and the new size) is stored *before* anything changes; the
storage delta is then reserved as a hold of that flow (kahuna.resources.quota: the usage and its
marker in one write), then `ResizeVolume`. It ends one of two ways, each idempotent:
    grown      the stored size becomes the new one, the hold is kept (usage + delta for good);
    not grown  the hold is given back; the stored size was never changed.
In the request: done -> grown; the agent answered an error (502) or nothing was sent -> not
grown, at once. When the answer is unknown (504, the client gone, the agent away mid-call) or
Kahuna was killed, the flow is left to recovery, which asks the agent (`GetVolumeInfos`): an image
already at the new size is grown (it cannot be shrunk back: finish forward, like a Kompute
delete); a smaller one is not grown, but only once the late grace (one call timeout, at most
`MAX_LATE_GRACE`) has passed since the call was given up (stamped in the plan by the request,
or by the first recovery after a crash), since an abandoned call may still land on the agent.
While a resize of a volume is unsettled, another resize or a delete of it is a 409.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from kahuna.logs import get_logger
from kahuna.orchestrator.agent_calls import AgentCalls, AgentFailed
from kahuna.orchestrator.flows import COLLECTION as FLOWS
from kahuna.orchestrator.flows import Flow, register_resume, register_undo
from kahuna.orchestrator.storage import ENOENT, pool_label
from kahuna.resources import quota
from kahuna.resources.errors import ConflictError, DomainError, NotFoundError
from kahuna.resources.storage import template_volume
from kahuna.store.base import delete_if_present

log = get_logger("kahuna.volumes")

Doc = dict[str, Any]
RESIZE_FLOW = "volume.resize"
MAX_LATE_GRACE = 30.0  # a not-grown verdict waits this long at most for an abandoned call to land


class ResizeUnsettled(Exception):
    """Recovery cannot tell yet whether the agent grows the image: the flow is retried."""


class VolumeEffects:
    def __init__(self, hub: Any) -> None:
        self.calls = AgentCalls(hub)

    async def call(self, pool: Doc, method: str, params: Doc) -> Any:
        _, reply = await self.calls.call_one(pool.get("agent_ids") or (), method, params, pool_label(pool))
        return reply

    async def create(self, res, doc: Doc, flow: Flow | None = None) -> None:
        """The image of a new volume document, quota first; in `flow` when the caller has one."""
        own = flow is None
        flow = flow or await Flow(res, "volume.create", doc["_id"]).start()
        try:
            await self.create_in(res, doc, flow)
        except BaseException:
            if own:
                await flow.rollback()
            raise
        if own:
            await flow.finish()
            try:  # the hold is kept; best effort: the project's next write of holds drops it anyway
                with trio.CancelScope(shield=True):
                    await quota.settle(res, doc["project_id"], f"{flow.id}-{doc['_id']}", keep=True)
            except Exception as exc:
                log.warning("volume hold left for the next write of holds", volume=doc["_id"], error=repr(exc))

    async def create_in(self, res, doc: Doc, flow: Flow) -> None:
        await flow.record("document", undo="store.delete", data={"collection": "volume", "id": doc["_id"]})
        size = int(doc["size"])
        hold = f"{flow.id}-{doc['_id']}"  # recorded before the usage moves, undone only if it did
        await flow.step("quota", lambda: quota.reserve(res, doc["project_id"], hold=hold, storage=size),
                        undo="project.hold", data={"project_id": doc["project_id"], "hold": hold})
        pool = await res.get("pool", doc["storage_pool_id"])
        params = {"Pool": pool["libvirt_pool"], "Volume": doc["image"], "Size": size}
        method = "CreateRawVolume"
        if doc["type"] == "os":
            template = await res.get("template", doc["template_id"])
            params["Template"] = template_volume(template)
            method = "CreateOsVolume"
        await flow.step("image", lambda: self.call(pool, method, params), undo="volume.image",
                        data={"pool_id": pool["_id"], "image": doc["image"]})

    async def resize(self, res, doc: Doc, delta: int) -> None:
        """Grow the image of `doc` (which carries the new size) by `delta`, durably (see the
        module docstring); the stored size is the new one when this returns. The caller holds
        the volume's lock or owns the volume (a Kompute update)."""
        await refuse_if_resizing(res, doc)
        pool = await res.get("pool", doc["storage_pool_id"])
        agent = self.calls.pick(pool.get("agent_ids") or (), "ResizeVolume", pool_label(pool))  # 503: nothing done
        flow = Flow(res, RESIZE_FLOW, doc["_id"])
        plan = {"volume_id": doc["_id"], "project_id": doc["project_id"], "pool_id": pool["_id"],
                "image": doc.get("image") or doc["name"], "size": int(doc["size"]),
                "old_size": int(doc["size"]) - int(delta), "hold": flow.id}
        await flow.start(resume=plan)
        try:
            await quota.reserve(res, plan["project_id"], hold=plan["hold"], storage=int(delta))
        except BaseException:
            await _settle_here(res, flow, grown=False)
            raise
        try:
            await self.calls.call(agent, "ResizeVolume", {"Pool": pool["libvirt_pool"], "Volume": plan["image"],
                                                           "Size": plan["size"]})
        except AgentFailed:  # the agent answered: it did not grow the image
            await _settle_here(res, flow, grown=False)
            raise
        except BaseException:  # unknown (timed out, cancelled, agent gone): recovery asks the agent
            log.warning("volume resize left to recovery", volume=doc["_id"], size=plan["size"])
            try:
                await _abandoned(res, flow)
            finally:
                flow.release()
            raise
        await _settle_here(res, flow, grown=True)

    async def delete_image(self, res, doc: Doc) -> None:
        await refuse_if_resizing(res, doc)
        try:
            pool = await res.get("pool", doc["storage_pool_id"])
        except NotFoundError:
            return
        await delete_image(self, pool, doc.get("image") or doc["name"])


async def delete_image(effects: VolumeEffects, pool: Doc, image: str) -> None:
    try:
        await effects.call(pool, "DeleteVolume", {"Pool": pool["libvirt_pool"], "Volume": image,
                                                   "WithSnapshots": True})
    except DomainError as exc:
        if ENOENT not in exc.reason and "not found" not in exc.reason.lower():
            raise


async def refuse_if_resizing(res, doc: Doc) -> None:
    """409 while a resize of this volume is unsettled (its outcome decides the size and usage)."""
    if await res.store.find(FLOWS, {"kind": RESIZE_FLOW, "target": doc["_id"]}, limit=1):
        raise ConflictError(f"volume {doc.get('name', doc['_id'])}: a resize is still being settled "
                            "(its agent has not answered yet); retry later")


async def _settle(res, plan: Doc, *, grown: bool) -> None:
    """End a resize, idempotently: the stored size first, then the hold (kept or given back).
    A crash between the two is settled the same way again (the agent's image decides)."""
    if grown:
        try:
            await res.set_fields("volume", plan["volume_id"], {"size": plan["size"]})
        except NotFoundError:
            pass
    await quota.settle(res, plan["project_id"], plan["hold"], keep=grown)


async def _settle_here(res, flow: Flow, *, grown: bool) -> None:
    """Settle in the request, shielded; if that fails (the store away) recovery does it."""
    try:
        with trio.CancelScope(shield=True):
            await _settle(res, flow.plan, grown=grown)
            await flow.finish()
    except BaseException:
        flow.release()
        raise


async def _abandoned(res, flow: Flow) -> None:
    """Stamp when the call was given up (here, or first seen by recovery after a crash): the
    late grace runs from then."""
    flow.plan["abandoned"] = time.time()
    with trio.CancelScope(shield=True):
        await res.store.update_fields(FLOWS, flow.id, {"plan": flow.plan})


def late_grace(res) -> float:
    settings = getattr(res.extras.get("hub"), "settings", None)
    return min(float(getattr(settings, "call_timeout", 0.0) or 0.0), MAX_LATE_GRACE)


async def _image_size(res, plan: Doc) -> int | None:
    """The image's size as the pool's agent reports it; None when the image or its pool is gone."""
    try:
        pool = await res.get("pool", plan["pool_id"])
    except NotFoundError:
        return None
    try:
        reply = await VolumeEffects(res.extras.get("hub")).call(
            pool, "GetVolumeInfos", {"Pool": pool["libvirt_pool"], "Volume": plan["image"]})
    except AgentFailed as exc:
        if ENOENT in exc.reason or "not found" in exc.reason.lower():
            return None
        raise
    return int((reply or {}).get("Size") or 0)


async def _resume_resize(res, flow: Flow) -> None:
    """Recovery: grown if the agent's image has the new size, else (once past the late grace)
    not grown. An agent still away raises: the flow stays, retried by `recover_loop`."""
    plan = flow.plan
    if not plan.get("abandoned"):  # left by a dead process
        await _abandoned(res, flow)
    size = await _image_size(res, plan)
    grown = size is not None and size >= plan["size"]
    if not grown and size is not None and time.time() - float(plan["abandoned"]) < late_grace(res):
        raise ResizeUnsettled(f"image {plan['image']} is {size} bytes: an abandoned ResizeVolume may still land")
    log.warning("volume resize settled by recovery", volume=plan["volume_id"], grown=grown, image_size=size)
    await _settle(res, plan, grown=grown)


async def _undo_image(res, data: Doc) -> None:
    try:
        pool = await res.get("pool", data["pool_id"])
    except NotFoundError:
        return
    await delete_image(VolumeEffects(res.extras.get("hub")), pool, data["image"])


async def _undo_document(res, data: Doc) -> None:
    await delete_if_present(res.store, data["collection"], data["id"])


register_undo("volume.image", _undo_image)
register_undo("store.delete", _undo_document)
register_resume(RESIZE_FLOW, _resume_resize)
