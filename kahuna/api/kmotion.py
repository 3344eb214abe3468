"""kMotion routes (kahuna.orchestrator.kmotion), for instances and for Komputes:

  POST  /instance/{instanceId}/kmotion/plan   | /kompute/{komputeId}/kmotion/plan    -> 201 KMotionPlan
  PATCH /instance/{instanceId}/kmotion/commit | /kompute/{komputeId}/kmotion/commit  -> 200 null

Bodies are the 0.58 client's `KMotionPlanRequest {destination, kaktus, live}` and
`KMotionCommitRequest {plan}`. Access: the `project` rule (members of the project's teams).
A Kompute's kMotion moves its instance; the plan's `instance` is that instance's id.
"""

from __future__ import annotations

from kahuna.api.routes import RouteTable, json_body, json_response, target_doc
from kahuna.orchestrator import kmotion
from kahuna.resources.errors import Invalid, NotFoundError
from kahuna.resources.types import Bool, Enum, Field, Str, check_object

PLAN_REQUEST = (Field("destination", Enum(choices=kmotion.MODES), default="auto"),
                Field("kaktus", Str(max_len=64), default=""),
                Field("live", Bool(), default=True))
COMMIT_REQUEST = (Field("plan", Str(max_len=64), default=""),)  # absent: 400 (upstream)


def install(table: RouteTable, *, resources) -> None:
    res = resources

    async def subject(kind: str) -> tuple[dict, dict | None]:
        doc = target_doc()
        if kind == "instance":
            return doc, None
        if not doc.get("instance_id"):
            raise NotFoundError(f"kompute {doc['_id']} has no instance")
        return await res.get("instance", doc["instance_id"]), doc

    def routes_for(kind: str, param: str) -> None:
        async def plan(principal, **params):
            body = check_object(PLAN_REQUEST, await _object(), "", partial=False)
            instance, kompute = await subject(kind)
            doc = await kmotion.plan(res, instance, destination=body["destination"], kaktus_id=body["kaktus"],
                                     live=body["live"], kompute=kompute)
            return json_response(kmotion.view(doc), 201)

        async def commit(principal, **params):
            body = check_object(COMMIT_REQUEST, await _object(), "", partial=False)
            instance, _ = await subject(kind)
            await kmotion.commit(res, instance["_id"], body["plan"])
            return json_response(None)

        table.add(f"/{kind}/{{{param}}}/kmotion/plan", "POST", "project", plan, name=f"plan_{kind}_k_motion")
        table.add(f"/{kind}/{{{param}}}/kmotion/commit", "PATCH", "project", commit,
                  name=f"commit_{kind}_k_motion")

    routes_for("instance", "instanceId")
    routes_for("kompute", "komputeId")


async def _object() -> dict:
    body = await json_body()
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    return body
