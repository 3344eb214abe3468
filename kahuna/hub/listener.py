"""The hub listener entry point kept for the server module: `nursery.start(serve, host, port)`.

It delegates to `Hub.serve`; without a hub it serves one with no credentials, which refuses
every agent (403), the placeholder's behaviour.
"""

from __future__ import annotations

import trio

from .hub import Hub


async def serve(host: str | None, port: int, *, hub: Hub | None = None,
                task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on host:port; report the bound (host, port) through `task_status`."""
    await (hub or Hub()).serve(host, port, task_status=task_status)
