"""Volume side effects on the pool's Kaktus agents, as durable flows (kahuna.orchestrator.flows).

Create: the document is already inserted by the service; the flow records it (undo: delete the
document), reserves the storage quota (undo: release), then records the image *before* asking an
agent of the pool for it (undo: `DeleteVolume`, an image already gone counts as deleted) — so a
failure, a cancelled request or a SIGKILL at any point leaves no image, no document, no usage.
"""

from __future__ import annotations

from typing import Any

from kahuna.logs import get_logger
from kahuna.orchestrator.agent_calls import AgentCalls
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.orchestrator.storage import ENOENT, pool_label
from kahuna.resources import quota
from kahuna.resources.errors import DomainError, NotFoundError
from kahuna.resources.storage import template_volume
from kahuna.store.base import delete_if_present

log = get_logger("kahuna.volumes")

Doc = dict[str, Any]


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

    async def create_in(self, res, doc: Doc, flow: Flow) -> None:
        await flow.record("document", undo="store.delete", data={"collection": "volume", "id": doc["_id"]})
        size = int(doc["size"])
        await quota.reserve(res, doc["project_id"], storage=size)
        await flow.record("quota", undo="project.usage",
                          data={"project_id": doc["project_id"], "delta": {"storage": size}})
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
        await quota.reserve(res, doc["project_id"], storage=delta)
        try:
            pool = await res.get("pool", doc["storage_pool_id"])
            await self.call(pool, "ResizeVolume", {"Pool": pool["libvirt_pool"], "Volume": doc["image"],
                                                    "Size": int(doc["size"])})
        except BaseException:
            await quota.release(res, doc["project_id"], storage=delta)
            raise

    async def delete_image(self, res, doc: Doc) -> None:
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
