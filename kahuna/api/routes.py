"""The API route table: every route is registered here with its access rule.

`RouteTable.add` wraps the handler so that, before it runs, the caller is authenticated
(`Authenticator`, skipped on `public` routes) and the route's rule is checked by
`kahuna.auth.policy`: first the role (`gate`: 401/403), then, when the path names an object
(the route's *target*, by default its first path parameter), that object is loaded and the rule
is checked against it (404 for an object the caller may not see, exactly like an unknown id).
A handler never sees an unauthenticated or unauthorised request; it finds the loaded target with
`target_doc()`. A route cannot exist without a rule, and the route-table test fails for any
application route that did not come through here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import orjson
import trio
from quart import Response, g, request

from kahuna.api import jsondecode
from kahuna.auth import policy
from kahuna.auth.principal import Principal
from kahuna.resources.errors import DomainError, Invalid
from kahuna.resources.kind import all_kinds, get_kind

API_PREFIX = "/api/v1"


class Authenticator(Protocol):
    async def __call__(self, headers) -> Principal | None:
        """The caller's principal; None when no credential was sent; Unauthorized when a sent
        credential is wrong."""


_PARAM = re.compile(r"{(\w+)}")
_DRAIN_SECONDS = 10.0
_DEFAULT: Any = object()


@dataclass(frozen=True)
class Route:
    path: str  # as the client writes it: /region/{regionId}
    method: str
    rule: str
    name: str
    target: str | None = None  # the path parameter naming the object the rule is checked on
    kind: str | None = None  # the kind of that object
    prefix: str = API_PREFIX

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.path)


class RouteTable:
    def __init__(self, app, authenticate: Authenticator, resources=None) -> None:
        self.app = app
        self.authenticate = authenticate
        self.resources = resources
        self.routes: list[Route] = []

    def add(self, path: str, method: str, rule: str, handler: Callable[..., Awaitable[Any]],
            *, name: str, prefix: str = API_PREFIX, target: str | None = _DEFAULT,
            shared_target: bool = False) -> Route:
        """Register `handler(principal, **path_params)` for `method path`, guarded by `rule`.

        `target` is the path parameter whose object the rule is checked on (default: the first
        one; None: no object check, e.g. a list that the handler filters itself). It must be some
        kind's id parameter (`regionId`, `projectId`, ...). `shared_target`: the handler only
        reads `target_doc()` (never mutates it nor hands it to code that might), so the guard
        serves it the id cache's own object instead of a copy.
        """
        policy.check_rule(rule)
        params = _PARAM.findall(path)
        if target is _DEFAULT:
            target = params[0] if params and rule != "public" else None
        kind = None
        if target is not None:
            if target not in params:
                raise ValueError(f"route {method} {path}: target {target!r} is not a path parameter")
            kind = _kind_of_param(target)
        route = Route(path, method, rule, name, target, kind, prefix)
        kind_obj = get_kind(kind) if kind is not None else None
        authenticate, resources = self.authenticate, self.resources
        public = rule == "public"
        if any(r.path == path and r.method == method and r.prefix == prefix for r in self.routes):
            raise ValueError(f"route {method} {path} registered twice")
        self.routes.append(route)

        async def guarded(**params):
            try:
                principal = None if public else await authenticate(request.headers)
                policy.gate(rule, principal)
                if target is not None:
                    g.kahuna_target = await policy.load(resources, principal, rule, kind_obj, params[target],
                                                        shared=shared_target)
                return await handler(principal, **params)
            except Exception:
                await _drain_body()
                raise

        guarded.__name__ = f"{name}_{method.lower()}"
        self.app.add_url_rule(prefix + _quart_path(path), guarded.__name__, guarded, methods=[method])
        return route


async def _drain_body() -> None:
    """Read what is left of a request body before an error answers it.

    Why: hypercorn recycles a keep-alive connection only once the request body has been read;
    answering a refused PUT before its body was consumed left the client's next request on that
    connection unanswered (seen with the official client's connection pool). Reading is bounded
    by MAX_CONTENT_LENGTH and by a deadline, so a slow sender cannot hold the answer back.
    """
    try:
        with trio.move_on_after(_DRAIN_SECONDS):
            await request.get_data(cache=False)
    except Exception:  # already consumed, too large, disconnected: nothing left to do
        pass


def target_doc() -> dict[str, Any]:
    """The object the current route's rule was checked on (loaded by the route guard)."""
    return g.kahuna_target


def _kind_of_param(param: str) -> str:
    for kind in all_kinds():
        if kind.id_param == param:
            return kind.name
    raise ValueError(f"path parameter {param!r} is no kind's id parameter")


def _quart_path(path: str) -> str:
    return path.replace("{", "<").replace("}", ">")


_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS  # to default=str


def json_bytes(body: Any) -> bytes:
    """`body` as JSON, compact: orjson (~0.5 µs for a document against ~4 µs), and the standard
    encoder wherever the two could mean different things: what orjson refuses (integers past 64
    bits, non-string keys, lone surrogates: TypeError) and any output holding a null (orjson
    writes NaN and infinities as null) are re-done by `json.dumps`, compact too. Objects JSON
    has no type for are written as `str()` writes them, as before (datetimes, ObjectIds)."""
    try:
        out = orjson.dumps(body, default=str, option=_ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(body, default=str, separators=(",", ":")).encode()
    if b"null" in out:
        return json.dumps(body, default=str, separators=(",", ":")).encode()
    return out


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json_bytes(body), status=status, content_type="application/json")


async def json_body() -> Any:
    """The decoded JSON body; 400 with a reason when it is absent or malformed."""
    ctype = request.headers.get("Content-Type")
    if ctype is not None and not _is_json(ctype):
        await _drain_body()
        raise UnsupportedMediaType(f"request body must be application/json, not {ctype[:80]}")
    raw = await request.get_data(cache=False)
    if not raw.strip():
        raise Invalid("request body must be a JSON object")
    return jsondecode.decode(raw)


class Unprocessable(DomainError):
    """422: for operations whose 0.58 document lists 422, not 400, for bad parameters (the
    token rotations)."""
    status, error = 422, "Unprocessable Entity"


def token_expiration(expire_param: str = "expire", *date_params: str) -> tuple[bool, str | None]:
    """`expire` and `expirationDate` query parameters of a token rotation; bad ones are 422."""
    from kahuna.auth import apikeys

    try:
        expire = query_bool(expire_param)
        raw = next((request.args[p] for p in date_params if p in request.args), None)
        return expire, apikeys.parse_expiration(expire, raw)
    except Invalid as exc:
        raise Unprocessable(exc.reason) from None


class UnsupportedMediaType(DomainError):
    status, error = 415, "Unsupported Media Type"


def _is_json(ctype: str) -> bool:
    """application/json with any parameters (the official client adds none; others add
    charset), or a +json suffix type. A body without Content-Type is still read as JSON."""
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def query_bool(name: str, default: bool = False) -> bool:
    """A boolean query parameter as the official client writes it (`true` / `false`)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise Invalid(f"{name}: expected true or false, got {raw!r}")
