"""The HTTP side of the WebSocket opening handshake (RFC 6455 §4), sans-I/O.

`parse_request(head)` reads one upgrade request (the bytes up to and including the blank line)
and answers an `Upgrade` (target, headers, the client's key) or raises `BadUpgrade` with the
status and counter name to answer with. `accept_response` / `reject_response` build the answers.
Only what an agent's upgrade needs is accepted: `GET`, HTTP/1.1 or later (§4.1; HTTP/1.0 is
refused 400), `Upgrade: websocket`, `Connection: upgrade`, a 16-byte base64
`Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13` (426 otherwise, naming the version we speak).
No extension and no subprotocol is ever agreed. Header names are lowercased once here; values
keep their bytes (the credential check decodes its own headers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import NamedTuple

MAX_HEAD = 16 * 1024          # like h11's default: a longer request head is refused
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 426: "Upgrade Required",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class Upgrade(NamedTuple):
    target: str
    headers: list[tuple[bytes, bytes]]   # (lowercased name, value) in request order
    key: bytes


class BadUpgrade(Exception):
    def __init__(self, status: int, reason: str, body: bytes,
                 extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(reason)
        self.status, self.reason, self.body, self.extra = status, reason, body, extra


def head_end(buffer: bytes | bytearray) -> int:
    """Length of the request head in `buffer` (through the blank line), or -1 if incomplete."""
    i = buffer.find(b"\r\n\r\n")
    return -1 if i < 0 else i + 4


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",")}


def parse_request(head: bytes) -> Upgrade:
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise BadUpgrade(400, "bad_request_line", b"bad request: malformed request line\n")
    method, target, version = parts
    if version == b"HTTP/1.0":
        raise BadUpgrade(400, "http_1_0", b"a WebSocket upgrade needs HTTP/1.1 (RFC 6455)\n")
    if version[5:] not in (b"1.1",) and not version[5:6].isdigit():
        raise BadUpgrade(400, "bad_request_line", b"bad request: malformed HTTP version\n")
    headers: list[tuple[bytes, bytes]] = []
    upgrade = connection = key = ws_version = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise BadUpgrade(400, "bad_header_line", b"bad request: malformed header line\n")
        name, value = name.lower(), value.strip(b" \t")
        headers.append((name, value))
        if name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection = value if connection is None else connection + b"," + value
        elif name == b"sec-websocket-key":
            key = value
        elif name == b"sec-websocket-version":
            ws_version = value
    if method != b"GET":
        raise BadUpgrade(400, "not_an_upgrade", b"bad request: a WebSocket upgrade is a GET\n")
    if upgrade is None or b"websocket" not in _tokens(upgrade) or connection is None \
            or b"upgrade" not in _tokens(connection):
        raise BadUpgrade(400, "not_an_upgrade", b"bad request: not a WebSocket upgrade\n")
    if ws_version != b"13":
        raise BadUpgrade(426, "bad_websocket_version", b"WebSocket version 13 only\n",
                         ((b"Sec-WebSocket-Version", b"13"),))
    try:
        if key is None or len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise BadUpgrade(400, "bad_websocket_key", b"bad request: invalid Sec-WebSocket-Key\n") from None
    try:
        text_target = target.decode("ascii")
    except UnicodeDecodeError:
        raise BadUpgrade(400, "bad_request_line", b"bad request: non-ASCII target\n") from None
    return Upgrade(text_target, headers, key)


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def accept_response(key: bytes) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")


def reject_response(status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Error").encode()),
             b"Content-Type: text/plain; charset=utf-8", b"Content-Length: %d" % len(body),
             b"Connection: close"]
    lines += [name + b": " + value for name, value in extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
