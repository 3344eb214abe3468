"""Placeholder hub listener: accepts the WebSocket handshake only to refuse it (403).

The agent hub issue replaces this module with the real hub; `serve` keeps this signature.
"""

from __future__ import annotations

import trio
from trio_websocket import WebSocketRequest, WebSocketServer, serve_websocket


async def _refuse(request: WebSocketRequest) -> None:
    await request.reject(403, body=b"agent authentication is not available\n")


async def serve(host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port; report the bound (host, port) through `task_status`."""
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(serve_websocket, _refuse, host, port, None)
        task_status.started((host, server.port))
