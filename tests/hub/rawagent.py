"""A hand-driven agent for hub tests: wsproto over a real trio socket, no SDK in between.

Tests decide everything the SDK would do for them: when to answer which request, whether to
answer pings, what bytes to send (text frames, bad JSON, oversized frames).
"""

from __future__ import annotations

import json
import math
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping,
                            RejectConnection, RejectData, Request, TextMessage)
from wsproto.utilities import LocalProtocolError


class Rejected(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"{status} {body!r}")
        self.status = status
        self.body = body


class RawAgent:
    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.auto_pong = True
        self.pings = 0
        self.texts: list[str] = []
        self.close_code: int | None = None
        self.closed = trio.Event()
        self._send_lock = trio.Lock()
        self._tx, self._rx = trio.open_memory_channel[Any](math.inf)
        self._parts: list[bytes | str] = []
        self._reading = trio.Event()
        self._reading.set()

    def pause_reading(self) -> None:
        """Stop reading the socket (a stalled agent): the hub's writes pile up."""
        self._reading = trio.Event()

    @classmethod
    async def connect(cls, nursery: trio.Nursery, port: int, headers: list[tuple[bytes, bytes]],
                      *, path: str = "/ws", timeout: float = 5.0) -> RawAgent:
        """Upgrade, or raise `Rejected(status, body)`; starts the frame pump in `nursery`."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target=path,
                                              extra_headers=headers)))
        status, body = None, b""
        with trio.fail_after(timeout):
            while True:
                data = await stream.receive_some(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        agent = cls(stream, ws)
                        nursery.start_soon(agent._pump)
                        return agent
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            await stream.aclose()
                            raise Rejected(status, b"")
                    if isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            await stream.aclose()
                            raise Rejected(status or 0, body)
                if not data:
                    await stream.aclose()
                    raise Rejected(status or 0, body)

    async def _send(self, event: Any) -> None:
        async with self._send_lock:
            try:
                await self.stream.send_all(self.ws.send(event))
            except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                pass

    async def _pump(self) -> None:
        data = b"-"      # events may already be queued: the 101 and a first frame can share a read
        try:
            while True:
                for event in self.ws.events():
                    if isinstance(event, Ping):
                        self.pings += 1
                        if self.auto_pong:
                            await self._send(event.response())
                    elif isinstance(event, Message):
                        self._parts.append(event.data)
                        if event.message_finished:
                            parts, self._parts = self._parts, []
                            joined: bytes | str = ("".join(parts) if isinstance(event, TextMessage)
                                                   else b"".join(parts))
                            self._tx.send_nowait(joined)
                    elif isinstance(event, CloseConnection):
                        if self.close_code is None:     # EOF after a close frame adds a 1006
                            self.close_code = int(event.code)
                        if self.ws.state == ConnectionState.REMOTE_CLOSING:
                            await self._send(event.response())
                        self.closed.set()
                if not data:
                    if self.close_code is None:
                        self.close_code = 1006
                    self.closed.set()
                    return
                await self._reading.wait()
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.ws.receive_data(data or None)
        finally:
            self._tx.close()
            await trio.aclose_forcefully(self.stream)

    # ------------------------------------------------------------------ test API

    async def message(self, timeout: float = 5.0) -> bytes | str:
        with trio.fail_after(timeout):
            return await self._rx.receive()

    async def request(self, timeout: float = 5.0) -> dict:
        """The next request (binary frame) from the hub, decoded."""
        while True:
            msg = await self.message(timeout)
            if isinstance(msg, str):
                self.texts.append(msg)
                continue
            return json.loads(msg)

    async def reply(self, request: dict | int, result: Any = None, error: str | None = None) -> None:
        call_id = request["id"] if isinstance(request, dict) else request
        await self.send_bytes(json.dumps({"id": call_id, "result": result, "error": error}).encode())

    async def answer_capabilities(self, methods: tuple[str, ...] = ("Capabilities", "Echo"),
                                  version: str = "1.0", timeout: float = 5.0) -> dict:
        request = await self.request(timeout)
        assert request["method"].endswith(".Capabilities"), request
        await self.reply(request, {"Version": version, "Methods": list(methods)})
        return request

    async def echo_forever(self) -> None:
        """Answer every request with its params (Capabilities excepted) until the session ends."""
        try:
            while True:
                request = await self.request(timeout=math.inf)
                await self.reply(request, request["params"])
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return

    async def send_bytes(self, data: bytes) -> None:
        await self._send(BytesMessage(data=data))

    async def send_text(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        with trio.fail_after(timeout):
            await self.closed.wait()
        return self.close_code

    async def aclose(self, code: int = 1000) -> None:
        if self.ws.state == ConnectionState.OPEN:
            await self._send(CloseConnection(code=code))
        await trio.aclose_forcefully(self.stream)
