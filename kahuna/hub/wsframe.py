"""RFC 6455 frames, server side, sans-I/O: client bytes in -> messages out; server frames built.

What the hub needs and nothing more: no extensions (permessage-deflate is never negotiated, so a
frame with an RSV bit is a protocol error), no subprotocols. Client frames must be masked, server
frames are not. A message (one frame or a fragmented series) bigger than `max_message_size` is
refused as soon as the frame header announcing it is read (close 1009), before its payload is
buffered. Control frames (ping, pong, close) may arrive between the fragments of a message, as
the RFC allows.

`FrameParser.feed(data)` answers the list of complete events `(opcode, payload)`:
  OP_BINARY / OP_TEXT  a whole data message (fragments joined; text checked to be UTF-8)
  OP_PING / OP_PONG    the control frame's payload
  OP_CLOSE             the raw close payload (see `parse_close`)
and raises `ProtocolError(code, reason)` for anything the RFC says ends the connection.
"""

from __future__ import annotations

import struct

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_NO_STATUS = 1005        # reported when a close frame carried no code (never sent)

_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack
_unpack_16 = struct.Struct("!H").unpack_from
_unpack_64 = struct.Struct("!Q").unpack_from
_from_bytes = int.from_bytes


class ProtocolError(Exception):
    """The peer broke the protocol: close the connection with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _pack_16(0x80 | opcode, 126, n) + payload
    return _pack_64(0x80 | opcode, 127, n) + payload


def binary_frame(payload: bytes) -> bytes:
    return frame(OP_BINARY, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control frame limit."""
    raw = reason.encode("utf-8")[:123]
    while raw:
        try:
            raw.decode("utf-8")
            break
        except UnicodeDecodeError:       # cut inside a character: drop its first bytes
            raw = raw[:-1]
    return frame(OP_CLOSE, struct.pack("!H", code) + raw)


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame's payload; raises ProtocolError when it is invalid."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _unpack_16(payload)[0]
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


def unmask(payload: bytes | memoryview, mask: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (_from_bytes(payload, "little") ^ _from_bytes(key, "little")).to_bytes(n, "little")


class FrameParser:
    """Incremental parser of the client's frames (one per connection)."""

    __slots__ = ("max_message_size", "_buf", "_need", "_parts", "_parts_len", "_parts_op")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buf: bytes | bytearray = b""   # an incomplete frame (a bytearray grows in place)
        self._need = 0                       # bytes _buf must hold before parsing is worth it
        self._parts: list[bytes] | None = None   # fragments of the message being assembled
        self._parts_len = 0
        self._parts_op = 0

    @property
    def buffered(self) -> int:
        """Bytes held: an incomplete frame plus the fragments of an unfinished message."""
        return len(self._buf) + self._parts_len

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._buf:
            buf = self._buf
            buf += data                      # bytearray: amortized, no quadratic copying
            if len(buf) < self._need:
                return []
        else:
            buf = data
        events: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        limit = self.max_message_size
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b0 & 0x70:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
            if not b1 & 0x80:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frame not masked")
            opcode, length = b0 & 0x0F, b1 & 0x7F
            head = 6
            if length == 126:
                if end - pos < 4:
                    break
                length = _unpack_16(buf, pos + 2)[0]
                head = 8
            elif length == 127:
                if end - pos < 10:
                    break
                length = _unpack_64(buf, pos + 2)[0]
                if length >> 63:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "frame length with the top bit set")
                head = 14
            if opcode >= 0x8:
                if opcode > OP_PONG:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if not b0 & 0x80 or length > 125:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame")
            elif opcode > OP_BINARY:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif self._parts_len + length > limit:
                raise ProtocolError(CLOSE_TOO_BIG, f"message larger than {limit} bytes")
            if end - pos < head + length:
                break
            mask = buf[pos + head - 4:pos + head]
            start = pos + head
            pos = start + length
            payload = unmask(memoryview(buf)[start:pos], mask) if length else b""
            if opcode >= 0x8:
                events.append((opcode, payload))
                continue
            fin = b0 & 0x80
            if opcode == OP_CONTINUATION:
                if self._parts is None:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message")
                self._parts.append(payload)
                self._parts_len += length
                if not fin:
                    continue
                opcode, payload = self._parts_op, b"".join(self._parts)
                self._parts, self._parts_len = None, 0
            elif self._parts is not None:
                raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            elif not fin:
                self._parts, self._parts_len, self._parts_op = [payload], length, opcode
                continue
            if opcode == OP_TEXT:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
            events.append((opcode, payload))
        if pos < end:
            self._buf = bytearray(buf[pos:])
            b1 = buf[pos + 1] & 0x7F if end - pos >= 2 else 0
            self._need = 2 if end - pos < 2 else (
                (6 if b1 < 126 else 8 if b1 == 126 else 14) + (b1 if b1 < 126 else 0))
            if b1 >= 126 and end - pos >= (4 if b1 == 126 else 10):
                length = _unpack_16(buf, pos + 2)[0] if b1 == 126 else _unpack_64(buf, pos + 2)[0]
                self._need += length
        else:
            self._buf, self._need = b"", 0
        return events
