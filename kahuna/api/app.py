"""The HTTP application: the generated resource routes, the special endpoints, health."""

from __future__ import annotations

import time
from types import FunctionType
from typing import Any, Callable, Iterable

from quart import g, request
from quart_trio import QuartTrio

import kahuna
from kahuna.api import errors, generic, identity, session
from kahuna.api.routes import Authenticator, RouteTable, json_response
from kahuna.logs import get_logger
from kahuna.resources.kind import all_kinds
from kahuna.resources.service import Resources

MAX_BODY = 16 * 1024 * 1024  # cloud-init payloads and large templates' metadata fit

log = get_logger("kahuna.http")


def create_app(resources: Resources, authenticate: Authenticator, *,
               installers: Iterable[Callable[[RouteTable], None]] = ()) -> tuple[QuartTrio, RouteTable]:
    """`installers` add the special (non-generic) routes of each feature to the route table."""
    app = _App("kahuna")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    errors.install(app)
    table = RouteTable(app, authenticate, resources)
    generic.install(table, resources, all_kinds())
    session.install(table, resources)
    identity.install(table, resources)
    for install in installers:
        install(table)

    log_finished = _log_requests()

    async def healthz(principal):
        node = resources.extras.get("ha")  # kahuna.ha: keepalived follows the active only
        if node is not None and not node.serving():
            return json_response({"status": "standby", **node.health()}, 503)
        ok = await resources.store.ping()
        body = {"status": "ok" if ok else "degraded", "store": "ok" if ok else "unreachable",
                "version": kahuna.__version__, **(node.health() if node is not None else {"role": "single"})}
        return json_response(body, 200 if ok else 503)

    extras = resources.extras

    @app.before_request
    async def standby():
        """The request log's clock starts; a passive node (kahuna.ha) answers every route but
        /healthz and /metrics with 503. (One hook for both: each hook costs Quart a lookup and
        an await per request.)"""
        g.started = time.perf_counter()
        node = extras.get("ha")
        if node is None or node.serving() or request.path in ("/healthz", "/metrics"):
            return None
        body = {"status": 503, "error": "Service Unavailable",
                "reason": f"this Kahuna is on standby; the active node is {node.active_node or 'unknown'}"}
        response = json_response(body, 503)
        response.headers["Retry-After"] = "2"
        return response

    app.after_request(log_finished)

    # through the table like every route: the route-table test checks that none bypasses it
    table.add("/healthz", "GET", "public", healthz, name="healthz", prefix="")

    return app, table


class _App(QuartTrio):
    """QuartTrio that answers `ensure_async` for a coroutine function from a memo: Quart asks it
    for every hook and view on every request, and each answer was an `inspect` flag test
    (bench/api.py's in-process profile: ~6 per read)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._coroutine_functions: set[Callable] = set()

    def ensure_async(self, func):
        try:
            if func in self._coroutine_functions:
                return func
        except TypeError:  # unhashable: not one of ours
            pass
        out = super().ensure_async(func)
        if out is func and type(func) is FunctionType:  # hooks and views: defined once
            self._coroutine_functions.add(func)
        return out


def _log_requests():
    """At DEBUG, one line per request (method, path, status, duration), as upstream does; the
    query string is left out since confirmation links carry tokens in it. The clock starts in
    the `standby` hook."""

    async def finished(response):
        if log.isEnabledFor(10):
            elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            log.debug("request", method=request.method, path=request.path,
                      status=response.status_code, ms=round(elapsed, 1))
        return response

    return finished
