"""Infrastructure routes beyond generic CRUD, as the official client 0.58 speaks them.

    GET   /kaktus/{kaktusId}/caps                   the node's capabilities (KaktusCaps)
    GET   /kaktus/{kaktusId}/instances              ids of the instances it hosts
    PATCH /kaktus/{kaktusId}/maintenance/enable     no new instance is placed on it (200, null)
    PATCH /kaktus/{kaktusId}/maintenance/disable
    GET   /pool/{poolId}/volumes                    ids of the volumes in the pool
    GET   /nfs/{nfsId}/kylos                        ids of the Kylo shares on the NFS storage
    PATCH /{parent}/{parentId}/{kind}/{id}/default  for every kind with a default child
                                                    (region pool and nfs, pool template, vnet
                                                    subnet): 200, null

`caps` answers an all-zero KaktusCaps until an agent of the Kaktus has connected and reported
(never 404 or 503: a Kaktus without capabilities yet is a normal state, and the client's model
parses zeros). The child lists query the children's collections (`instance.kaktus_id`,
`volume.storage_pool_id`, `kylo.nfs_id`): empty until those kinds exist and have documents.

Agent failures in the side effects of these kinds' generic routes (template create/delete,
DNS records, Kiwi changes) answer, per kahuna.orchestrator.agent_calls:
    503 no eligible agent connected (or the agent went away meanwhile),
    502 the agent answered an error (its message is the reason),
    504 the agent did not answer within the call timeout (`ws.callTimeout`).
"""

from __future__ import annotations

from kahuna.api.routes import RouteTable, json_response, target_doc
from kahuna.resources import compute
from kahuna.resources.errors import Unavailable
from kahuna.resources.kind import all_kinds, get_kind
from kahuna.resources.service import Resources
from kahuna.store import errors as store_errors


async def child_ids(res: Resources, collection: str, field: str, parent_id: str) -> list[str]:
    """Ids of the documents of `collection` whose `field` is `parent_id` (oldest first)."""
    try:
        docs = await res.store.find(collection, {field: parent_id}, sort="_id")
    except store_errors.Unavailable as exc:
        raise Unavailable(f"database unavailable: {exc}") from None
    return [d["_id"] for d in docs]


def install(table: RouteTable, resources: Resources) -> None:
    async def caps(principal, kaktusId):
        return json_response(compute.caps_of(target_doc()))

    async def instances(principal, kaktusId):
        return json_response(await child_ids(resources, "instance", "kaktus_id", kaktusId))

    async def maintenance_on(principal, kaktusId):
        await compute.set_maintenance(resources, kaktusId, True)
        return json_response(None)

    async def maintenance_off(principal, kaktusId):
        await compute.set_maintenance(resources, kaktusId, False)
        return json_response(None)

    async def volumes(principal, poolId):
        return json_response(await child_ids(resources, "volume", "storage_pool_id", poolId))

    async def kylos(principal, nfsId):
        return json_response(await child_ids(resources, "kylo", "nfs_id", nfsId))

    table.add("/kaktus/{kaktusId}/caps", "GET", "admin", caps, name="read_kaktus_caps")
    table.add("/kaktus/{kaktusId}/instances", "GET", "admin", instances, name="list_kaktus_instances")
    table.add("/kaktus/{kaktusId}/maintenance/enable", "PATCH", "admin", maintenance_on,
              name="enable_kaktus_maintenance")
    table.add("/kaktus/{kaktusId}/maintenance/disable", "PATCH", "admin", maintenance_off,
              name="disable_kaktus_maintenance")
    table.add("/pool/{poolId}/volumes", "GET", "admin", volumes, name="list_storage_pool_volumes")
    table.add("/nfs/{nfsId}/kylos", "GET", "admin", kylos, name="list_storage_nfs_kylos")

    for kind in all_kinds():
        if kind.default_in and kind.parent:
            _install_default(table, resources, kind)


def _install_default(table: RouteTable, res: Resources, kind) -> None:
    parent = get_kind(kind.parent.kind)

    async def set_default(principal, **params):
        await res.set_default(kind, params[parent.id_param], params[kind.id_param])
        return json_response(None)

    table.add(f"/{parent.name}/{{{parent.id_param}}}/{kind.name}/{{{kind.id_param}}}/default", "PATCH",
              kind.access.update, set_default, name=f"set_{parent.name}_default_{kind.name}")
