"""A resource kind, declared once: collection, fields, parent, uniqueness, hooks, routes.

Everything else is derived from the declaration: validation and API <-> document mapping
(`kahuna.resources.service`), indexes, and the HTTP routes (`kahuna.api.generic`). A kind's
module declares it and calls `register`; `kahuna.resources.catalog` imports every such module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from kahuna.resources.types import Field, Name, Str
from kahuna.store.base import Index

SCHEMA_VERSION = 2

# Hook signature: async def hook(ctx, doc, **extra) -> None. `ctx` is the service's Context.
Hook = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Parent:
    kind: str  # the parent kind's name ("region")
    field: str  # the document field holding the parent's id ("region_id")


@dataclass(frozen=True)
class Access:
    """Route rules by operation; the policy module (`kahuna.auth.policy`) gives them meaning."""

    read: str = "admin"
    create: str = "admin"
    update: str = "admin"
    delete: str = "admin"


@dataclass(frozen=True)
class Hooks:
    before_create: Hook | None = None  # may raise to refuse; may fill server-side fields
    after_create: Hook | None = None  # side effects (agent RPCs); raising undoes the create
    before_update: Hook | None = None
    after_update: Hook | None = None
    before_delete: Hook | None = None  # side effects that must succeed before the document goes
    after_delete: Hook | None = None


@dataclass(frozen=True)
class Kind:
    name: str  # API path segment and model name: "zone"
    fields: tuple[Field, ...]
    collection: str = ""  # defaults to `name` (upstream's singular collection names)
    parent: Parent | None = None
    plural: str = ""  # list path under the parent: /region/{regionId}/zones
    id_param: str = ""  # path parameter: "zoneId"
    unique: tuple[str, ...] = ("name",)  # unique within the parent (document keys)
    access: Access = Access()
    hooks: Hooks = Hooks()
    schema_version: int = SCHEMA_VERSION
    routes: frozenset[str] = frozenset({"list", "create", "read", "update", "delete", "children"})
    # document fields looked up often enough to deserve an index (beyond parent and unique)
    indexed: tuple[str, ...] = ()
    label: str = ""  # human name in messages ("storage pool")
    # other kinds this kind points at by id beyond its parent (an NFS storage's pool): such a
    # document cannot be deleted while documents of this kind reference it (409, like children)
    references: tuple[Parent, ...] = ()
    # creates, updates and deletes of this kind run one at a time in this process, hooks included:
    # for kinds whose hooks check invariants across the whole collection (MAC addresses unique
    # across subnets, no two subnets of a region overlapping) or order agent pushes (DNS)
    serialize_writes: bool = False
    # "default child": the path in the parent document holding the id of the parent's default
    # child of this kind ("defaults.pool_id" on a region). The first child becomes the default;
    # deleting it moves the default to the oldest remaining sibling; `Resources.set_default`
    # moves it (one field of one document: one default per parent, moved atomically).
    default_in: str = ""
    # tenant kinds (volume, instance, kompute...): the project owning the document and where it
    # lives (one of `locations`, e.g. zone or region). Both links are indexed; names are unique
    # within the owner; routes are /project/{projectId}/<location>/{locationId}/<kind> (generic).
    owner: Parent | None = None
    locations: tuple[Parent, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "collection", self.collection or self.name)
        object.__setattr__(self, "plural", self.plural or self.name + "s")
        object.__setattr__(self, "id_param", self.id_param or self.name + "Id")
        object.__setattr__(self, "label", self.label or self.name)

    @property
    def field_map(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    def indexes(self) -> list[Index]:
        """Index names start with the collection: SQLite's index names are database-wide."""
        scope = (self.parent.field,) if self.parent else (self.owner.field,) if self.owner else ()
        out = []
        if self.unique:
            keys = scope + self.unique
            out.append(Index(f"{self.collection}_uniq_{'_'.join(keys)}", keys, unique=True))
        if self.parent:
            out.append(Index(f"{self.collection}_by_{self.parent.field}", (self.parent.field,)))
        links = ([self.owner] if self.owner else []) + list(self.locations)
        out.extend(Index(f"{self.collection}_by_{link.field}", (link.field,)) for link in links
                   if link.field not in self.indexed)
        out.extend(Index(f"{self.collection}_by_{key}", (key,)) for key in self.indexed)
        out.extend(Index(f"{self.collection}_by_{ref.field}", (ref.field,)) for ref in self.references
                   if ref.field not in self.indexed)
        return out


# Fields every resource has (upstream's `Resource` base): the API id is the document `_id`.
def base_fields(*, name_required: bool = True) -> tuple[Field, ...]:
    return (
        Field("id", Str(), read_only=True, db="_id"),
        Field("name", Name(), required=name_required),
        Field("description", Str(max_len=65536), default=""),
    )


_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in _REGISTRY and _REGISTRY[kind.name] is not kind:
        raise ValueError(f"resource kind {kind.name!r} declared twice")
    _REGISTRY[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    return _REGISTRY[name]


def all_kinds() -> list[Kind]:
    return list(_REGISTRY.values())


def children_of(kind: Kind) -> list[Kind]:
    return [k for k in _REGISTRY.values() if k.parent and k.parent.kind == kind.name]


def dependents_of(kind: Kind) -> list[tuple[Kind, str]]:
    """(kind, field) of every kind owned by, or located in, `kind` (a project's volumes, a
    zone's instances): such a document cannot be deleted while they exist (409)."""
    out = []
    for k in _REGISTRY.values():
        for link in ([k.owner] if k.owner else []) + list(k.locations):
            if link.kind == kind.name:
                out.append((k, link.field))
    return out


def referrers_of(kind: Kind) -> list[tuple[Kind, str]]:
    """(kind, field) of every declared reference to `kind` beyond the parent links."""
    return [(k, ref.field) for k in _REGISTRY.values() for ref in k.references if ref.kind == kind.name]


def doc_value(doc: dict[str, Any], path: str, default: Any = None) -> Any:
    """Read a dotted path out of a document."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_doc_value(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
