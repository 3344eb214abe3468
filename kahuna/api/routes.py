"""The API route table: every route is registered here with its access rule.

`RouteTable.add` wraps the handler so that, before it runs, the caller is authenticated
(`Authenticator`) and the route's rule is checked (`kahuna.auth.policy`): a handler never sees an
unauthenticated or unauthorised request, and a route cannot exist without a rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from quart import Response, request

from kahuna.auth import policy
from kahuna.auth.principal import Principal
from kahuna.resources.errors import Forbidden, Invalid, Unauthorized

API_PREFIX = "/api/v1"


class Authenticator(Protocol):
    async def __call__(self, headers) -> Principal | None:
        """The caller's principal; None when no credential was sent; Unauthorized when a sent
        credential is wrong."""


@dataclass(frozen=True)
class Route:
    path: str  # as the client writes it: /region/{regionId}
    method: str
    rule: str
    name: str


class RouteTable:
    def __init__(self, app, authenticate: Authenticator) -> None:
        self.app = app
        self.authenticate = authenticate
        self.routes: list[Route] = []

    def add(self, path: str, method: str, rule: str, handler: Callable[..., Awaitable[Any]],
            *, name: str, prefix: str = API_PREFIX) -> None:
        policy.check_rule(rule)
        route = Route(path, method, rule, name)
        if any(r.path == path and r.method == method for r in self.routes):
            raise ValueError(f"route {method} {path} registered twice")
        self.routes.append(route)

        async def guarded(**params):
            principal = await self.authenticate(request.headers)
            if not policy.allowed(rule, principal):
                if principal is None:
                    raise Unauthorized("authentication required (X-API-Key or Authorization: Bearer)")
                raise Forbidden("not allowed")
            return await handler(principal, **params)

        guarded.__name__ = f"{name}_{method.lower()}"
        self.app.add_url_rule(prefix + _quart_path(path), guarded.__name__, guarded, methods=[method])


def _quart_path(path: str) -> str:
    return path.replace("{", "<").replace("}", ">")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status=status, content_type="application/json")


async def json_body() -> Any:
    """The decoded JSON body; 400 with a reason when it is absent or malformed."""
    raw = await request.get_data(cache=False)
    if not raw.strip():
        raise Invalid("request body must be a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"malformed JSON: {exc}") from None
