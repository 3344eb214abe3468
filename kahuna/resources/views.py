"""The API view of a document, when a kind's stored shape differs from its API shape.

`to_api` (kahuna.resources.service) serves each declared field from its document path. Some
upstream fields are stored in another shape than the API's: a project's `private_subnets` is a
map `{region name: subnet id}` in the database and a list of `{key, value}` on the API. A kind
registers a view for such fields; `present` applies it.
"""

from __future__ import annotations

from typing import Any, Callable

from kahuna.resources.kind import Kind, get_kind
from kahuna.resources.service import to_api

View = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]  # (document, api dict) -> api dict
_VIEWS: dict[str, View] = {}


def register_view(kind_name: str, view: View) -> None:
    _VIEWS[kind_name] = view


def present(kind: Kind | str, doc: dict[str, Any]) -> dict[str, Any]:
    kind = get_kind(kind) if isinstance(kind, str) else kind
    out = to_api(kind, doc)
    view = _VIEWS.get(kind.name)
    return view(doc, out) if view else out


def map_as_pairs(value: Any) -> Any:
    """`{k: v}` -> `[{"key": k, "value": v}]` (lists are left as they are)."""
    if isinstance(value, dict):
        return [{"key": str(k), "value": str(v)} for k, v in sorted(value.items())]
    return value
