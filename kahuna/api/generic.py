"""HTTP routes generated from the resource declarations, as the official client 0.58 speaks them.

For a kind `zone` with parent `region`:
  POST /region/{regionId}/zone      create (201, the model)
  GET  /region/{regionId}/zones     ids of the parent's children
  GET  /zone                        ids of all zones
  GET|PUT|DELETE /zone/{zoneId}     read (200), partial update (200), delete (200, null)
List endpoints answer arrays of id strings, as upstream does.

Access (kahuna.auth.policy): each route carries the kind's rule for its operation. The route
guard checks it against the object the path names before the handler runs (an object the caller
may not see is a 404, like an unknown id); list handlers keep only what the caller may see.
A list under a parent is guarded by the parent's read rule (the caller must see the parent) and
filtered by the child's; a child kind readable by admins only keeps its `admin` rule.
"""

from __future__ import annotations

from quart import request

from kahuna.api.routes import RouteTable, json_body, json_response, target_doc
from kahuna.auth import policy
from kahuna.resources.kind import Kind, get_kind
from kahuna.resources.service import Resources
from kahuna.resources.views import present

_GATE_ONLY = ("admin", "public", "projectCreator")


def install(table: RouteTable, resources: Resources, kinds: list[Kind]) -> None:
    for kind in kinds:
        _install_kind(table, resources, kind)


def _install_kind(table: RouteTable, res: Resources, kind: Kind) -> None:
    one = f"/{kind.name}/{{{kind.id_param}}}"
    access = kind.access

    async def list_all(principal):
        docs = await policy.visible(res, principal, access.read, kind, await res.list(kind))
        return json_response([d["_id"] for d in docs])

    async def read(principal, **params):
        return json_response(present(kind, target_doc()))

    async def update(principal, **params):
        doc = await res.update(kind, params[kind.id_param], await json_body(),
                               principal=principal, query=request.args)
        return json_response(present(kind, doc))

    async def delete(principal, **params):
        await res.delete(kind, params[kind.id_param], principal=principal, query=request.args)
        return json_response(None)

    if "list" in kind.routes:
        table.add(f"/{kind.name}", "GET", access.read, list_all, name=f"list_{kind.name}")
    if "read" in kind.routes:
        table.add(one, "GET", access.read, read, name=f"read_{kind.name}", shared_target=True)
    if "update" in kind.routes:
        table.add(one, "PUT", access.update, update, name=f"update_{kind.name}")
    if "delete" in kind.routes:
        table.add(one, "DELETE", access.delete, delete, name=f"delete_{kind.name}")

    if kind.owner is not None:
        _install_tenant(table, res, kind)
        return

    if kind.parent is None:
        async def create(principal):
            doc = await res.create(kind, await json_body(), principal=principal, query=request.args)
            return json_response(present(kind, doc), 201)

        if "create" in kind.routes:
            table.add(f"/{kind.name}", "POST", access.create, create, name=f"create_{kind.name}")
        return

    parent = get_kind(kind.parent.kind)
    under = f"/{parent.name}/{{{parent.id_param}}}"

    async def create_child(principal, **params):
        doc = await res.create(kind, await json_body(), params[parent.id_param],
                               principal=principal, query=request.args)
        return json_response(present(kind, doc), 201)

    async def list_children(principal, **params):
        children = await res.list(kind, params[parent.id_param])
        docs = await policy.visible(res, principal, access.read, kind, children)
        return json_response([d["_id"] for d in docs])

    list_rule = access.read if access.read in _GATE_ONLY else parent.access.read
    if "create" in kind.routes:
        table.add(f"{under}/{kind.name}", "POST", access.create, create_child,
                  name=f"create_{parent.name}_{kind.name}")
    if "children" in kind.routes:
        table.add(f"{under}/{kind.plural}", "GET", list_rule, list_children,
                  name=f"list_{parent.name}_{kind.plural}")


def _install_tenant(table: RouteTable, res: Resources, kind: Kind) -> None:
    """Tenant kinds: /project/{projectId}/<location>/{locationId}/<kind> (create) and
    .../<plural> (list, filtered by owner AND location — upstream answers every document there,
    a quirk we do not keep). The guard checks the project (members of its teams; others 404)."""
    owner = get_kind(kind.owner.kind)
    if not kind.locations:  # owned, not located (a project's Kwarantine groups)
        async def create_owned(principal, **params):
            doc = await res.create(kind, await json_body(), owner_id=params[owner.id_param],
                                   principal=principal, query=request.args)
            return json_response(present(kind, doc), 201)

        async def list_owned(principal, **params):
            docs = await res.list(kind, **{kind.owner.field: params[owner.id_param]})
            return json_response([d["_id"] for d in docs])

        under = f"/{owner.name}/{{{owner.id_param}}}"
        if "create" in kind.routes:
            table.add(f"{under}/{kind.name}", "POST", kind.access.create, create_owned,
                      name=f"create_{owner.name}_{kind.name}", target=owner.id_param)
        if "children" in kind.routes:
            table.add(f"{under}/{kind.plural}", "GET", kind.access.read, list_owned,
                      name=f"list_{owner.name}_{kind.plural}", target=owner.id_param)
    for link in kind.locations:
        where = get_kind(link.kind)
        under = f"/{owner.name}/{{{owner.id_param}}}/{where.name}/{{{where.id_param}}}"

        def handlers(link=link, where=where):
            async def create(principal, **params):
                doc = await res.create(kind, await json_body(), owner_id=params[owner.id_param],
                                       location=(link.field, params[where.id_param]),
                                       principal=principal, query=request.args)
                return json_response(present(kind, doc), 201)

            async def list_here(principal, **params):
                await res.get(where, params[where.id_param])
                docs = await res.list(kind, **{kind.owner.field: params[owner.id_param],
                                               link.field: params[where.id_param]})
                return json_response([d["_id"] for d in docs])
            return create, list_here

        create, list_here = handlers()
        if "create" in kind.routes:
            table.add(f"{under}/{kind.name}", "POST", kind.access.create, create,
                      name=f"create_{owner.name}_{where.name}_{kind.name}", target=owner.id_param)
        if "children" in kind.routes:
            table.add(f"{under}/{kind.plural}", "GET", kind.access.read, list_here,
                      name=f"list_{owner.name}_{where.name}_{kind.plural}", target=owner.id_param)
