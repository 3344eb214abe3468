"""ASGI guard between hypercorn and the application: a request body is always read to its end
(bounded) before the response goes out, and the end of a response always reaches hypercorn's
connection bookkeeping.

Why (hypercorn 0.18, trio, HTTP/1.1 via h11): when the response ends while the request body is
still arriving (h11 `our_state` DONE, `their_state` SEND_BODY), `H11Protocol._maybe_recycle`
takes its "cannot recycle" branch: it first delivers `http.disconnect` to the app, then sends
`Closed()` to the TCP server, which shuts the socket down. But Quart-trio's request task is the
one executing that code (it is inside its own `send`), and Quart's message task, woken by the
`http.disconnect`, cancels their shared nursery: the `send_eof()` checkpoint raises `Cancelled`
and the socket is never closed. The reader goes on, h11 reaches DONE/DONE with nobody calling
`start_next_cycle()`, the next request parks in `can_read.wait()` forever (outside
`read_timeout`, and the keep-alive idle timer was never restarted): the connection hangs and,
once the client leaves, stays in CLOSE-WAIT holding a descriptor. Any response that can leave
before the body is read (`/healthz`, routing 404/405, 413, auth failures …) triggers it.

The guard therefore fixes it for every response, at the one place all of them pass:
- before `http.response.start` is forwarded, the rest of the request body is read and thrown
  away, at most `DRAIN_MAX_BYTES` within `DRAIN_SECONDS`; then h11 sees both sides DONE and the
  keep-alive connection is recycled normally. If the body is too large, too slow, or declared
  larger than the bound, the response says `Connection: close` instead;
- the final `http.response.body` is sent inside a shielded cancel scope, so hypercorn's recycle
  or close bookkeeping (restart the idle timer, or shut the socket) runs to its end even when
  the app's own scope is cancelled meanwhile. Everything it does there is non-blocking apart
  from the socket write, which hypercorn already shields itself.
A subclass of hypercorn's H11Protocol would have to be injected by patching a module global of
hypercorn; the ASGI layer is public, version-independent and testable.

One defect the ASGI layer cannot reach: when the peer closes an idle keep-alive connection,
hypercorn's trio `TCPServer` leaves its read loop but its task group still waits for the idle
timer (`keep_alive_timeout`) before the socket is closed, so every connection a client drops
sits in CLOSE-WAIT with its descriptor for that long (1,100 dropped connections in 30 s exhaust
a 1,024 limit). `_ClosingTCPServer` stops the idle timer once nothing more can be read (EOF,
read_timeout, reset): the idle timer exists only to close the connection, which is now closing
anyway once in-flight work ends. `guard()` installs it (idempotently) in `hypercorn.trio.run`,
the one place hypercorn 0.18 names the class. Its idle timer is `kahuna.api.idle_timer`'s (why:
there).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from itertools import chain

import h11
import trio
from hypercorn import protocol as hypercorn_protocol
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import run as hypercorn_trio_run
from hypercorn.trio.tcp_server import TCPServer

from kahuna.api.idle_timer import IdleTimer

DRAIN_MAX_BYTES = 1024 * 1024
DRAIN_SECONDS = 5.0


class _Exchange:
    """Observes one HTTP request's receive channel: how much body came and whether it ended.
    Only for requests with a body: a bodyless one has nothing to drain (see `guard`)."""

    def __init__(self, receive, declared: int | None):
        self._receive = receive
        self.ended = trio.Event()
        self.received = 0
        self.declared = declared

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.ended.set()
        elif message["type"] == "http.disconnect":
            self.ended.set()
        return message

    async def drain(self) -> bool:
        """Read (and drop) what is left of the body; True when it ended within the bounds. The
        app may be reading concurrently (Quart's message task does): both go through
        `receive`, so whichever gets the last part ends the wait."""
        if self.ended.is_set():
            return True
        if self.declared is not None and self.declared > DRAIN_MAX_BYTES:
            return False
        with trio.move_on_after(DRAIN_SECONDS):
            async with trio.open_nursery() as nursery:
                async def read_rest():
                    while not self.ended.is_set() and self.received <= DRAIN_MAX_BYTES:
                        await self.receive()
                    nursery.cancel_scope.cancel()

                async def watch():
                    await self.ended.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read_rest)
                nursery.start_soon(watch)
        return self.ended.is_set()


def _body_framing(scope) -> tuple[int | None, bool]:
    """(Content-Length or None, whether a Transfer-Encoding was sent)."""
    length, chunked = None, False
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"content-length" and length is None:
            try:
                length = int(value)
            except ValueError:
                chunked = True  # unreadable framing: never assume there is no body
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


class _ClosingTCPServer(TCPServer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.idle_task = IdleTimer(self)  # one task per connection, not one per request

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self.idle_task.close()


class _JsonErrorH11Protocol(H11Protocol):
    """Errors hypercorn writes itself, before any routing (bad or duplicate Content-Length,
    oversized headers, missing Host, a request line h11 cannot parse): the same JSON
    `{status, error, reason}` as every API error instead of an empty body."""

    async def _send_error_response(self, status_code: int) -> None:
        phrase = HTTPStatus(status_code).phrase
        body = json.dumps({"status": status_code, "error": phrase,
                           "reason": "malformed HTTP request (refused by the HTTP server)"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await self._send_h11_event(h11.Response(
            status_code=status_code, headers=list(chain(headers, self.config.response_headers("h11")))))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


def guard(app):
    """Wrap an ASGI app (HTTP scopes only; lifespan and websocket pass through untouched), and
    install the two hypercorn fixes above where hypercorn 0.18 names the classes."""
    if hypercorn_trio_run.TCPServer is TCPServer:
        hypercorn_trio_run.TCPServer = _ClosingTCPServer
    if hypercorn_protocol.H11Protocol is H11Protocol:
        hypercorn_protocol.H11Protocol = _JsonErrorH11Protocol

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared, chunked = _body_framing(scope)
        if declared == 0 or (declared is None and not chunked):
            # no Content-Length and no Transfer-Encoding: a request without a body (RFC 9112
            # §6.3), which h11 has already finished reading: nothing to drain nor to observe
            # (most GETs; bench/api.py measured the drain's nursery at ~100 µs per such request,
            # then the observing wrappers at ~4 µs), only the final send to shield
            async def bodyless_send(message):
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    with trio.CancelScope(shield=True):
                        await send(message)
                    return
                await send(message)

            return await app(scope, receive, bodyless_send)
        exchange = _Exchange(receive, declared)

        async def guarded_send(message):
            kind = message["type"]
            if kind == "http.response.start":
                if not await exchange.drain():
                    headers = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"connection"]
                    message = {**message, "headers": headers + [(b"connection", b"close")]}
            elif kind == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        await app(scope, exchange.receive, guarded_send)

    return guarded
