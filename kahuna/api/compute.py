"""Compute routes beyond the generic ones: instance and Kompute state, power actions, connect.

  GET   /instance/{instanceId}/state | /kompute/{komputeId}/state     -> InstanceState
  GET   /instance/{instanceId}/connect                                -> InstanceRemoteAccess
  PATCH /instance|kompute/{id}/{start,stop,shutdown,reboot,reset,suspend,resume} -> null
  DELETE /instance/{instanceId}                                       -> null (kahuna.orchestrator.instances)
  kMotion plan/commit: kahuna.api.kmotion (installed from here)

Access: the `project` rule (members of the project's teams; others 404). A power action that
would not change anything (stop of a stopped domain, start of a running one) is a no-op; other
agent refusals are 422 with libvirt's words (upstream); an unreachable agent stays 503/504.
"""

from __future__ import annotations

from kahuna.api import kmotion
from kahuna.api.routes import RouteTable, json_response, target_doc
from kahuna.orchestrator import instances
from kahuna.orchestrator.agent_calls import AgentCalls
from kahuna.orchestrator.komputes import set_membership
from kahuna.resources.views import present
from kahuna.resources.errors import DomainError, Missing, NotFoundError

ACTIONS = {"start": 1, "reboot": 2, "reset": 3, "stop": 4, "shutdown": 5, "suspend": 6, "resume": 7}
STOPPED = ("Shutoff", "Shutdown", "No State", "Crashed")
# actions with nothing to do in these states
NO_OP = {"start": ("Running",), "stop": STOPPED, "shutdown": STOPPED, "resume": ("Running",),
         "suspend": ("Paused", "PM Suspended")}


def install(table: RouteTable, *, resources) -> None:
    res = resources

    async def instance_of(kind: str) -> dict:
        doc = target_doc()
        if kind == "instance":
            return doc
        if not doc.get("instance_id"):
            raise NotFoundError(f"kompute {doc['_id']} has no instance")
        return await res.get("instance", doc["instance_id"])

    async def agent_call(instance: dict, method: str, params: dict):
        calls = AgentCalls(res.extras.get("hub"))
        kaktus = await res.get("kaktus", instance["kaktus_id"])
        _, reply = await calls.call_one(kaktus.get("agent_ids") or (), method, params, f"Kaktus {kaktus['name']}")
        return reply

    async def state_of(instance: dict) -> dict:
        reply = await agent_call(instance, "GetInstanceState", {"Name": instance["name"]}) or {}
        return {"state": str(reply.get("State", "")), "reason": str(reply.get("Reason", ""))}

    def routes_for(kind: str, param: str) -> None:
        async def state(principal, **params):
            return json_response(await state_of(await instance_of(kind)))

        table.add(f"/{kind}/{{{param}}}/state", "GET", "project", state, name=f"read_{kind}_state")

        for action, code in ACTIONS.items():
            async def power(principal, _action=action, _code=code, **params):
                instance = await instance_of(kind)
                current = (await state_of(instance))["state"]
                if current in NO_OP.get(_action, ()):
                    return json_response(None)
                try:
                    await agent_call(instance, "InstanceOperation", {"Name": instance["name"], "Action": _code})
                except DomainError as exc:
                    if exc.status == 502:  # the agent answered: libvirt refused
                        raise Missing(f"{_action}: {exc.reason}") from None
                    raise
                return json_response(None)

            table.add(f"/{kind}/{{{param}}}/{action}", "PATCH", "project", power, name=f"{action}_{kind}")

    routes_for("instance", "instanceId")
    routes_for("kompute", "komputeId")

    async def connect(principal, **params):
        instance = target_doc()
        reply = await agent_call(instance, "GetInstanceRemoteConnectionUrl", {"Name": instance["name"]}) or {}
        return json_response({"url": str(reply.get("URL", ""))})

    table.add("/instance/{instanceId}/connect", "GET", "project", connect, name="read_instance_remote_connection")

    async def delete_instance(principal, **params):
        await instances.delete(res, target_doc()["_id"])
        return json_response(None)

    table.add("/instance/{instanceId}", "DELETE", "project", delete_instance, name="delete_instance")
    kmotion.install(table, resources=res)

    # Kwarantine membership: the member must be of the group's project (else 404)
    def membership(kind: str, param: str, field: str) -> None:
        async def member_doc(params) -> dict:
            group = target_doc()
            try:
                doc = await res.get(kind, params[param])
            except NotFoundError:
                doc = None
            if doc is None or doc.get("project_id") != group.get("project_id"):
                raise NotFoundError(f"{kind} {params[param]} not found")
            return doc

        async def add(principal, **params):
            doc = await member_doc(params)
            group = await set_membership(res, target_doc()["_id"], field, doc["_id"], True)
            await res.set_fields(kind, doc["_id"], {"kwarantine_ids": sorted(
                set(doc.get("kwarantine_ids") or ()) | {group["_id"]})})
            return json_response(present("kwarantine", group))

        async def remove(principal, **params):
            doc = await member_doc(params)
            await set_membership(res, target_doc()["_id"], field, doc["_id"], False)
            await res.set_fields(kind, doc["_id"], {"kwarantine_ids": [
                k for k in doc.get("kwarantine_ids") or () if k != target_doc()["_id"]]})
            return json_response(None)

        path = f"/kwarantine/{{kwarantineId}}/{kind}/{{{param}}}"
        table.add(path, "PUT", "project", add, name=f"add_kwarantine_{kind}", target="kwarantineId")
        table.add(path, "DELETE", "project", remove, name=f"remove_kwarantine_{kind}", target="kwarantineId")

    membership("instance", "instanceId", "instance_ids")
    membership("kompute", "komputeId", "kompute_ids")
