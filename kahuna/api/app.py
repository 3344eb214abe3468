"""The HTTP application: the generated resource routes, the special endpoints, health."""

from __future__ import annotations

from quart_trio import QuartTrio

import kahuna
from kahuna.api import errors, generic
from kahuna.api.routes import Authenticator, RouteTable, json_response
from kahuna.resources.kind import all_kinds
from kahuna.resources.service import Resources

MAX_BODY = 16 * 1024 * 1024  # cloud-init payloads and large templates' metadata fit


def create_app(resources: Resources, authenticate: Authenticator) -> tuple[QuartTrio, RouteTable]:
    app = QuartTrio("kahuna")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    errors.install(app)
    table = RouteTable(app, authenticate)
    generic.install(table, resources, all_kinds())

    @app.get("/healthz")
    async def healthz():
        ok = await resources.store.ping()
        body = {"status": "ok" if ok else "degraded", "store": "ok" if ok else "unreachable",
                "version": kahuna.__version__}
        return json_response(body, 200 if ok else 503)

    return app, table
