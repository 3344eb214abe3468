"""Keep-alive connections close when idle for `keep_alive_timeout`, never while a request runs
(kahuna/api/idle_timer.py behind kahuna/api/guard.py).

Served in-process by hypercorn's trio `serve()` with the daemon's settings and the guard, on a
loopback port, with a short keep-alive timeout; the client is a plain socket, so what is
asserted is what a client sees: when the server closes the connection. A bare hypercorn +
Quart-trio app fails `test_idle_after_a_request_closes_at_the_keep_alive_timeout`: its idle
timer is never restarted once a request was served, so the connection stays open for good.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio

from kahuna.api.guard import guard
from kahuna.config import Config
from kahuna.server import hypercorn_config

KEEP_ALIVE = 0.6
REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


def _app() -> QuartTrio:
    app = QuartTrio("keepalive")

    @app.route("/fast")
    async def fast():
        return Response(b"{}", content_type="application/json")

    @app.route("/slow")
    async def slow():
        await trio.sleep(KEEP_ALIVE * 2.5)
        return Response(b"{}", content_type="application/json")

    return app


@pytest.fixture
async def server(nursery):
    """(port, shutdown event) of a guarded hypercorn serving `_app` with a short keep-alive."""
    hc = hypercorn_config(Config())
    hc.bind = ["127.0.0.1:0"]
    hc.keep_alive_timeout = KEEP_ALIVE
    shutdown = trio.Event()
    binds = await nursery.start(partial(serve, guard(_app()), hc, shutdown_trigger=shutdown.wait))
    yield int(binds[0].rsplit(":", 1)[1]), shutdown
    shutdown.set()


async def _request(stream: trio.SocketStream, path: str) -> bytes:
    await stream.send_all(REQUEST % path.encode())
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n{}" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, f"connection closed before the response to /{path}: {data!r}"
            data += chunk
    return data


async def _closed_after(stream: trio.SocketStream, limit: float = 10.0) -> float:
    """Seconds until the server closes the connection (EOF or reset)."""
    started = trio.current_time()
    with trio.fail_after(limit):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
    return trio.current_time() - started


async def test_idle_after_a_request_closes_at_the_keep_alive_timeout(server):
    port, _ = server
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    assert b" 200 " in await _request(stream, "fast")
    waited = await _closed_after(stream, limit=KEEP_ALIVE * 5)
    assert KEEP_ALIVE * 0.8 <= waited <= KEEP_ALIVE * 3, waited


async def test_a_connection_that_never_sends_closes_at_the_keep_alive_timeout(server):
    port, _ = server
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    waited = await _closed_after(stream, limit=KEEP_ALIVE * 5)
    assert KEEP_ALIVE * 0.8 <= waited <= KEEP_ALIVE * 3, waited


async def test_requests_keep_the_connection_open_past_the_timeout(server):
    """Each request moves the idle deadline on: eight requests spaced at half the timeout are
    all answered on one connection, twice as long as the timeout itself; the close then comes
    a timeout after the last one (half a timeout after the sleep), not at a deadline an earlier
    request had set."""
    port, _ = server
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    for _ in range(8):
        assert b" 200 " in await _request(stream, "fast")
        await trio.sleep(KEEP_ALIVE / 2)
    waited = await _closed_after(stream, limit=KEEP_ALIVE * 5)
    assert KEEP_ALIVE * 0.3 <= waited <= KEEP_ALIVE * 3, waited


async def test_a_request_longer_than_the_timeout_is_answered(server):
    port, _ = server
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    started = trio.current_time()
    assert b" 200 " in await _request(stream, "slow")
    assert trio.current_time() - started >= KEEP_ALIVE * 2
    assert b" 200 " in await _request(stream, "fast")  # still the same connection
    waited = await _closed_after(stream, limit=KEEP_ALIVE * 5)
    assert KEEP_ALIVE * 0.8 <= waited <= KEEP_ALIVE * 3, waited


async def test_shutdown_closes_idle_connections_and_finishes_running_requests(server, nursery):
    port, shutdown = server
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    assert b" 200 " in await _request(idle, "fast")
    busy = await trio.open_tcp_stream("127.0.0.1", port)
    await busy.send_all(REQUEST % b"slow")
    await trio.sleep(0.1)
    shutdown.set()
    assert await _closed_after(idle, limit=KEEP_ALIVE * 0.8) < KEEP_ALIVE * 0.8  # at once, not at the timeout
    data = b""
    with trio.fail_after(10):
        while True:
            chunk = await busy.receive_some(4096)
            if not chunk:
                break
            data += chunk
    assert b" 200 " in data and data.endswith(b"{}")  # answered in full, then closed
