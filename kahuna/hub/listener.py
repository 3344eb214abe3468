"""Placeholder hub listener: accepts the WebSocket handshake only to refuse it (403).

The agent hub issue replaces this module with the real hub; `serve` keeps this signature.
"""

from __future__ import annotations

import trio
from trio_websocket import WebSocketRequest, serve_websocket


async def _refuse(request: WebSocketRequest) -> None:
    await request.reject(403, body=b"agent authentication is not available\n")


async def serve(host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port; report the bound (host, port) through `task_status`."""
    await serve_websocket(_refuse, host, port, ssl_context=None, task_status=task_status)
