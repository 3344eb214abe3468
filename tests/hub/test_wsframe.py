"""The hub's WebSocket layer without sockets: frames checked against wsproto's client (an
independent implementation of RFC 6455), the upgrade request, and the deadline timer."""

import math

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Request, TextMessage

from kahuna.hub.deadlines import Deadlines
from kahuna.hub.upgrade import BadUpgrade, accept_key, accept_response, parse_request, reject_response
from kahuna.hub.wsframe import (OP_BINARY, OP_PING, OP_TEXT, FrameParser,
                                ProtocolError, binary_frame, close_frame, frame, parse_close, unmask)


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def masked(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + unmask(payload, mask)


def test_client_frames_of_every_size_byte_by_byte_and_at_once():
    c = client()
    data = b"".join(c.send(BytesMessage(data=b"x" * n)) for n in (0, 1, 125, 126, 65535, 65536, 70000))
    data += c.send(Ping(payload=b"hb")) + c.send(TextMessage(data="héllo"))
    for chunk in (len(data), 1, 4096):
        parser = FrameParser(1 << 20)
        events = []
        for i in range(0, len(data), chunk):
            events += parser.feed(data[i:i + chunk])
        assert [(op, len(p)) for op, p in events] == [(OP_BINARY, n) for n in (0, 1, 125, 126, 65535, 65536, 70000)] \
            + [(OP_PING, 2), (OP_TEXT, 6)]
        assert events[-1][1].decode() == "héllo" and parser.buffered == 0


def test_fragmented_message_with_a_ping_between_the_fragments():
    data = masked(OP_BINARY, b'{"id":1,', fin=False) + masked(OP_PING, b"p") + \
        masked(0, b'"result":2,', fin=False) + masked(0, b'"error":null}')
    assert FrameParser(1 << 20).feed(data) == [(OP_PING, b"p"), (OP_BINARY, b'{"id":1,"result":2,"error":null}')]


def test_server_frames_are_what_a_client_reads():
    c = client()
    payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 70000]
    c.receive_data(b"".join(binary_frame(p) for p in payloads) + frame(OP_PING, b"hb")
                   + close_frame(4000, "replaced by a new session"))
    events = list(c.events())
    assert [e.data for e in events if isinstance(e, Message)] == payloads
    assert any(isinstance(e, Ping) and e.payload == b"hb" for e in events)
    close = [e for e in events if isinstance(e, CloseConnection)][0]
    assert (close.code, close.reason) == (4000, "replaced by a new session")


@pytest.mark.parametrize("data,code", [
    (bytes([0x82, 0x05]) + b"hello", 1002),                         # not masked
    (bytes([0xC2, 0x80]) + b"\0\0\0\0", 1002),                      # RSV1 without an extension
    (masked(0x3, b""), 1002),                                       # reserved opcode
    (masked(OP_PING, b"x" * 126), 1002),                            # control frame too long
    (masked(OP_PING, b"x", fin=False), 1002),                       # fragmented control frame
    (masked(0, b"x"), 1002),                                        # continuation of nothing
    (masked(OP_BINARY, b"a", fin=False) + masked(OP_BINARY, b"b"), 1002),
    (masked(OP_TEXT, b"\xff\xfe"), 1007),                           # text that is not UTF-8
])
def test_protocol_errors(data, code):
    with pytest.raises(ProtocolError) as info:
        FrameParser(1 << 20).feed(data)
    assert info.value.code == code


def test_oversized_message_refused_on_its_header_before_the_payload_arrives():
    parser = FrameParser(1000)
    assert parser.feed(masked(OP_BINARY, b"x" * 600, fin=False)) == []
    header_only = masked(0, b"y" * 500)[:8]        # 16-bit length header + mask, no payload yet
    with pytest.raises(ProtocolError) as info:
        parser.feed(header_only)
    assert info.value.code == 1009
    with pytest.raises(ProtocolError):
        FrameParser(1000).feed(masked(OP_BINARY, b"z" * 1001)[:14])


def test_close_payloads():
    assert parse_close(b"") == (1005, "")
    assert parse_close((1000).to_bytes(2, "big") + "bye".encode()) == (1000, "bye")
    for bad in (b"\x03", (999).to_bytes(2, "big"), (1005).to_bytes(2, "big"), (5000).to_bytes(2, "big")):
        with pytest.raises(ProtocolError):
            parse_close(bad)
    long_reason = close_frame(1011, "é" * 100)             # cut to fit, on a character
    assert len(long_reason) <= 2 + 125
    assert parse_close(long_reason[2:]) == (1011, "é" * 61)


# ----------------------------------------------------------------------------- upgrade

def request(*lines: bytes, version: bytes = b"1.1") -> bytes:
    base = [b"GET /ws HTTP/" + version, b"Host: kahuna", b"Upgrade: websocket",
            b"Connection: keep-alive, Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13"]
    return b"\r\n".join(base + list(lines)) + b"\r\n\r\n"


def test_upgrade_request_parsed_and_accepted_as_rfc_6455_example():
    up = parse_request(request(b"X-WS-Kowabunga-Id: abc"))
    assert up.target == "/ws" and (b"x-ws-kowabunga-id", b"abc") in up.headers
    assert accept_key(up.key) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="       # RFC 6455 §1.3
    # a real client's own request parses, and our answer is one it accepts
    client_ws = WSConnection(ConnectionType.CLIENT)
    key = parse_request(client_ws.send(Request(host="kahuna", target="/ws"))).key
    client_ws.receive_data(accept_response(key))
    assert [type(e).__name__ for e in client_ws.events()] == ["AcceptConnection"]


@pytest.mark.parametrize("raw,status,reason", [
    (request(version=b"1.0"), 400, "http_1_0"),
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not_an_upgrade"),
    (request().replace(b"Version: 13", b"Version: 8"), 426, "bad_websocket_version"),
    (request().replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), 400, "bad_websocket_key"),
    (request(b" folded"), 400, "bad_header_line"),
    (b"\x16\x03\x01garbage\r\n\r\n", 400, "bad_request_line"),
    (request().replace(b"GET", b"POST"), 400, "not_an_upgrade"),
])
def test_bad_upgrades(raw, status, reason):
    with pytest.raises(BadUpgrade) as info:
        parse_request(raw)
    assert (info.value.status, info.value.reason) == (status, reason)


def test_refusal_is_a_complete_http_answer():
    raw = reject_response(403, b"forbidden\n")
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden") and b"Content-Length: 10" in head and body == b"forbidden\n"


# ----------------------------------------------------------------------------- deadlines

class Entry:
    def __init__(self) -> None:
        self.lane = None
        self.expired = 0

    def expire(self) -> None:
        self.expired += 1


def test_deadlines_fire_once_in_order_and_settled_entries_never():
    now = [100.0]
    timer = Deadlines(clock=lambda: now[0])
    a, b, c = Entry(), Entry(), Entry()
    timer.add(a, 1.0)
    timer.add(b, 0.5)
    timer.add(c, 1.0)
    Deadlines.settle(c)
    assert len(timer) == 2 and timer.next_due() == 100.5
    now[0] = 100.6
    assert timer.expire_due(now[0]) == 1 and (a.expired, b.expired) == (0, 1)
    now[0] = 101.0
    assert timer.expire_due(now[0]) == 1 and (a.expired, b.expired, c.expired) == (1, 1, 0)
    assert len(timer) == 0 and timer.next_due() == math.inf
    Deadlines.settle(a)                  # idempotent once fired


def test_settled_entries_do_not_accumulate():
    timer = Deadlines(clock=lambda: 0.0)
    for _ in range(100_000):
        entry = Entry()
        timer.add(entry, 600.0)
        Deadlines.settle(entry)          # the reply came long before the deadline
    lane = timer._lanes[600.0]
    assert lane.live == 0 and len(lane.entries) < 1000
