"""RFC 6455 §4.1: a WebSocket upgrade needs HTTP/1.1; an HTTP/1.0 one is refused before the
upgrade (issue 12 §3), while the same request over HTTP/1.1 is accepted."""

from __future__ import annotations

import trio


async def _answer_to(port: int, version: bytes, headers) -> bytes:
    lines = [b"GET /ws HTTP/" + version, b"Host: 127.0.0.1", b"Upgrade: websocket",
             b"Connection: Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             b"Sec-WebSocket-Version: 13"]
    lines += [name + b": " + value for name, value in headers]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"\r\n".join(lines) + b"\r\n\r\n")
        with trio.fail_after(5):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return data


async def test_http_1_0_upgrade_is_refused_and_1_1_accepted(hub):
    refused = await _answer_to(hub.port, b"1.0", hub.headers())
    assert refused.split(b"\r\n")[0].startswith(b"HTTP/1.1 400"), refused
    assert not hub.hub.is_connected("0123456789abcdef01234567")
    accepted = await _answer_to(hub.port, b"1.1", hub.headers())
    assert accepted.split(b"\r\n")[0].startswith(b"HTTP/1.1 101"), accepted
