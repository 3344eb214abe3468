"""Network adapters made by flows (a Kompute's NICs, an appliance's VIPs), with their undo.

An adapter goes through the adapter kind's own write path (kahuna.resources.network): writes of
that kind run one at a time, so the lowest free address and a unique MAC are chosen atomically.
The step is recorded in the flow *before* the write (undo `adapter.delete` with the subnet and
the adapter's name, the id added once known), so a failure or a SIGKILL right after the write
still finds and deletes it: no adapter, no address is left behind.

    adapter = await create_adapter(res, flow, subnet_id=s, name="web1-private-adapter",
                                   project_id=p, assign_ip=True)
"""

from __future__ import annotations

from typing import Any

from kahuna.logs import get_logger
from kahuna.orchestrator.flows import Flow, register_undo
from kahuna.resources.errors import NotFoundError

log = get_logger("kahuna.adapters")

Doc = dict[str, Any]
UNDO = "adapter.delete"


async def create_adapter(res, flow: Flow, *, subnet_id: str, name: str, project_id: str, assign_ip: bool,
                         reserved: bool = False) -> Doc:
    """A new adapter on `subnet_id` (the lowest free address when `assign_ip`), owned by the
    project (`project_id` on the document); recorded on `flow` with its undo. Errors are the
    adapter kind's: 404 subnet, 409 name taken, 507 no free address."""
    await flow.record(f"adapter {name}", undo=UNDO, data={"adapter_id": "", "subnet_id": subnet_id, "name": name})
    doc = await res.create("adapter", {"name": name, "reserved": reserved}, subnet_id,
                           query={"assignIP": "true" if assign_ip else "false"})
    await flow.remember(adapter_id=doc["_id"])
    if project_id:
        doc = await res.set_fields("adapter", doc["_id"], {"project_id": project_id})
    log.info("adapter created", adapter=doc["_id"], name=name, addresses=doc.get("addresses"))
    return doc


async def delete_adapter(res, adapter_id: str) -> None:
    """Delete an adapter (its address is free again); one already gone counts as deleted."""
    if not adapter_id:
        return
    try:
        await res.delete("adapter", adapter_id)
    except NotFoundError:
        return
    log.info("adapter deleted", adapter=adapter_id)


async def _undo(res, data: Doc) -> None:
    adapter_id = data.get("adapter_id") or ""
    if not adapter_id and data.get("subnet_id") and data.get("name"):
        # recorded, then killed before the id was remembered: find it by its (unique) name
        try:
            found = await res.list("adapter", data["subnet_id"], name=data["name"])
        except NotFoundError:  # the subnet is gone, and its adapters with it
            return
        adapter_id = found[0]["_id"] if found else ""
    await delete_adapter(res, adapter_id)


register_undo(UNDO, _undo)
