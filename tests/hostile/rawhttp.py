"""Raw-socket HTTP/1.1 helpers: what a slow or hostile client does, byte by byte."""

from __future__ import annotations

import json
import socket


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_response(s: socket.socket, buffer: bytearray | None = None) -> tuple[int, dict, bytes]:
    """One response (status, lower-cased headers, body) framed by Content-Length; raises
    socket.timeout when the server does not answer."""
    buf = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {bytes(buf)!r}")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    buf[:] = body[length:]
    return status, headers, bytes(body[:length])


def json_of(body: bytes):
    return json.loads(body) if body else None
