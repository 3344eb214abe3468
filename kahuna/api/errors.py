"""Every API error is JSON `{"status", "error", "reason"}` with the right status; never a trace."""

from __future__ import annotations

import json
from http import HTTPStatus

from quart import Response

from kahuna.logs import get_logger
from kahuna.resources.errors import DomainError, TooManyRequests

log = get_logger("kahuna.api")


def error_response(status: int, reason: str, headers: dict | None = None) -> Response:
    body = {"status": status, "error": HTTPStatus(status).phrase, "reason": reason}
    return Response(json.dumps(body), status=status, content_type="application/json", headers=headers or {})


def install(app) -> None:
    """Register the handlers that turn every failure into a JSON error body."""

    @app.errorhandler(DomainError)
    async def domain_error(exc: DomainError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
        return error_response(exc.status, exc.reason, headers)

    @app.errorhandler(404)
    async def not_found(_exc):
        return error_response(404, "no such route")

    @app.errorhandler(405)
    async def not_allowed(_exc):
        return error_response(405, "method not allowed on this route")

    @app.errorhandler(413)
    async def too_large(_exc):
        return error_response(413, "request body too large")

    @app.errorhandler(400)
    async def bad_request(_exc):
        return error_response(400, "bad request")

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception):
        from werkzeug.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            return error_response(exc.code or 500, exc.description or HTTPStatus(exc.code or 500).phrase)
        log.error("unhandled error", error=type(exc).__name__, exc_info=exc)
        return error_response(500, "internal error (logged on the server)")
