"""The one module that decides who may do what.

Every API route declares one rule (`RouteTable.add(..., rule, target=...)`); a resource kind
declares its rules per operation in `Kind.access` (read, create, update, delete). Registering a
route with an unknown rule fails at start, and the route-table test fails for a route whose rule
has no expected answers.

Rules:
- `public`: no authentication (login, password-reset request, confirmation pages, health).
- `authenticated`: any authenticated caller (logout; reading regions and zones).
- `admin`: superAdmin (the role, or the master API key). Anyone else gets 403 before anything is
  looked up: these routes are known to exist, so refusing them reveals nothing.
- `projectCreator`: projectAdmin or superAdmin (POST /project); users get 403.
- `project`: superAdmin, or a member of the project the object belongs to (a member of one of
  the project's teams). The project of an object is the object itself for a project, else its
  `project_id`, else its parent's project (walking up the declared parents).
- `projectAdmin`: like `project`, and the member must be a projectAdmin; a plain user member gets
  403 (they can see the project), a non-member 404.
- `own`: superAdmin, or the caller's own object: their user, a team they belong to, an API key
  whose `user_id` is theirs (`register_owner` adds kinds).
- `catalogue`: superAdmin, or a caller with a project in the object's region (the object itself
  for a region, else its `region_id`, else its parent's region): the pools, templates and
  networks a user needs to choose where to create.

Object rules (`project`, `projectAdmin`, `own`, `catalogue`) are checked against the route's
*target* (the object its path names): an object the caller may not see answers 404 with the very
words an unknown id gets, so ids cannot be probed. On list routes they filter the list instead.
"""

from __future__ import annotations

from typing import Any, Callable

from kahuna.auth.principal import Principal
from kahuna.resources.errors import Forbidden, NotFoundError, Unauthorized, Unavailable
from kahuna.resources.kind import Kind, get_kind
from kahuna.store import errors as store_errors
from kahuna.store.base import is_valid_id, read_shared

RULES: dict[str, str] = {
    "public": "no authentication",
    "authenticated": "any authenticated caller",
    "admin": "superAdmin only (others 403)",
    "projectCreator": "projectAdmin or superAdmin (users 403)",
    "project": "superAdmin or a member of the object's project (others 404)",
    "projectAdmin": "superAdmin or a projectAdmin member of the object's project "
                    "(user members 403, others 404)",
    "own": "superAdmin or the caller's own user, team or API key (others 404)",
    "catalogue": "superAdmin or a caller with a project in the object's region (others 404)",
}
OBJECT_RULES = frozenset({"project", "projectAdmin", "own", "catalogue"})

Doc = dict[str, Any]
_OWNERS: dict[str, Callable[[Principal, Doc], bool]] = {
    "user": lambda p, doc: doc.get("_id") == p.user_id,
    "team": lambda p, doc: doc.get("_id") in p.team_ids,
}


def register_owner(kind_name: str, owns: Callable[[Principal, Doc], bool]) -> None:
    """Say what `own` means for a kind (default: the document's `user_id` is the caller's)."""
    _OWNERS[kind_name] = owns


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown access rule {rule!r} (known: {', '.join(RULES)})")
    return rule


def gate(rule: str, principal: Principal | None) -> None:
    """The checks that need no object: authentication and role. Raises 401 or 403."""
    if rule == "public":
        return
    if principal is None:
        raise Unauthorized("authentication required (X-API-Key or Authorization: Bearer)")
    if principal.is_super_admin:
        return
    if rule == "admin":
        raise Forbidden("this operation is reserved to superAdmin")
    if rule == "projectCreator" and not principal.is_project_admin:
        raise Forbidden("creating projects is reserved to projectAdmin and superAdmin")


def allowed(rule: str, principal: Principal | None) -> bool:
    """Would `gate` let this principal through? (object rules are decided by `authorize`)."""
    try:
        gate(rule, principal)
    except (Unauthorized, Forbidden):
        return False
    return True


def not_found(kind: Kind, doc_id: Any) -> NotFoundError:
    """The 404 of an unknown id, and of an id the caller may not see: the same words."""
    return NotFoundError(f"{kind.label} {doc_id} not found")


async def load(res, principal: Principal | None, rule: str, kind: Kind | str, doc_id: str, *,
               shared: bool = False) -> Doc:
    """The document `doc_id` of `kind`, if `principal` may act on it under `rule`. `shared`: the
    id cache's own object (`CachedStore.get_shared`, no copy), for a caller that never mutates
    it (a read that only presents the document)."""
    kind = _kind(kind)
    try:
        doc = await (_get_shared(res, kind, doc_id) if shared else res.get(kind, doc_id))
    except NotFoundError:
        raise not_found(kind, doc_id) from None
    await authorize(res, principal, rule, kind, doc)
    return doc


async def _get_shared(res, kind: Kind, doc_id: str) -> Doc:
    """`res.get(kind, doc_id)` answering the cached object itself (where the store has a cache)."""
    if not is_valid_id(doc_id):
        return await res.get(kind, doc_id)
    try:
        doc = await read_shared(res.store, kind.collection, doc_id)
    except store_errors.Unavailable as exc:
        raise Unavailable(f"database unavailable: {exc}") from None
    if doc is None:
        raise not_found(kind, doc_id)
    return doc


async def authorize(res, principal: Principal | None, rule: str, kind: Kind | str, doc: Doc) -> None:
    """Raise 404 (may not see it), 403 (may see it, not do this) or 401; None when allowed."""
    kind = _kind(kind)
    gate(rule, principal)
    if rule not in OBJECT_RULES or principal.is_super_admin:
        return
    if rule == "own":
        if not _owns(principal, kind, doc):
            raise not_found(kind, doc["_id"])
        return
    if rule == "catalogue":
        region = await region_of(res, kind, doc)
        if region is None or region not in await region_ids(res, principal):
            raise not_found(kind, doc["_id"])
        return
    project = await _project_doc(res, kind, doc)
    if project is None or not is_member(principal, project):
        raise not_found(kind, doc["_id"])
    if rule == "projectAdmin" and not principal.is_project_admin:
        raise Forbidden("only a projectAdmin of this project may do this")


async def may(res, principal: Principal | None, rule: str, kind: Kind | str, doc: Doc) -> bool:
    try:
        await authorize(res, principal, rule, kind, doc)
    except (NotFoundError, Forbidden, Unauthorized):
        return False
    return True


async def visible(res, principal: Principal | None, rule: str, kind: Kind | str, docs: list[Doc]) -> list[Doc]:
    """The documents of a list the caller may see under `rule` (object rules filter)."""
    kind = _kind(kind)
    gate(rule, principal)
    if rule not in OBJECT_RULES or principal.is_super_admin:
        return docs
    if rule == "own":
        return [d for d in docs if _owns(principal, kind, d)]
    if rule == "catalogue":
        regions = await region_ids(res, principal)
        return [d for d in docs if await region_of(res, kind, d) in regions]
    projects = await project_ids(res, principal)
    return [d for d in docs if await project_of(res, kind, d) in projects]


def is_member(principal: Principal, project: Doc) -> bool:
    return bool(principal.team_ids.intersection(project.get("team_ids") or ()))


async def project_ids(res, principal: Principal) -> set[str]:
    """Ids of the projects `principal` is a member of (every project for superAdmin)."""
    projects = await res.list("project")
    if principal.is_super_admin:
        return {p["_id"] for p in projects}
    return {p["_id"] for p in projects if is_member(principal, p)}


async def region_ids(res, principal: Principal) -> set[str]:
    """Ids of the regions of the projects `principal` is a member of."""
    regions: set[str] = set()
    for project in await res.list("project"):
        if principal.is_super_admin or is_member(principal, project):
            regions.update(project.get("region_ids") or ())
    return regions


async def project_of(res, kind: Kind | str, doc: Doc) -> str | None:
    return await _up(res, _kind(kind), doc, "project")


async def region_of(res, kind: Kind | str, doc: Doc) -> str | None:
    return await _up(res, _kind(kind), doc, "region")


async def _project_doc(res, kind: Kind, doc: Doc) -> Doc | None:
    if kind.name == "project":
        return doc
    project_id = await project_of(res, kind, doc)
    if project_id is None:
        return None
    try:
        return await res.get("project", project_id)
    except NotFoundError:
        return None


async def _up(res, kind: Kind, doc: Doc, target: str) -> str | None:
    """The id of the `target` kind ("project", "region") this document belongs to, if any."""
    for _ in range(16):  # declared parents form a short tree; never loop on bad data
        if kind.name == target:
            return doc.get("_id")
        if doc.get(f"{target}_id"):
            return doc[f"{target}_id"]
        if kind.parent is None or not doc.get(kind.parent.field):
            return None
        parent = get_kind(kind.parent.kind)
        try:
            doc = await res.get(parent, doc[kind.parent.field])
        except NotFoundError:
            return None
        kind = parent
    return None


def _owns(principal: Principal, kind: Kind, doc: Doc) -> bool:
    if principal.user_id is None:
        return False
    owns = _OWNERS.get(kind.name)
    if owns is not None:
        return owns(principal, doc)
    return doc.get("user_id") == principal.user_id


def _kind(kind: Kind | str) -> Kind:
    return get_kind(kind) if isinstance(kind, str) else kind
