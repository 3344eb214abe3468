"""Frame codec of the agent protocol (sans-I/O): requests out, replies in.

Upstream framing, one JSON document per binary WebSocket frame:
  request  {"id": <uint64>, "method": "<Type>.<Method>", "params": <object>}
  reply    {"id": <same>, "result": <any>, "error": null | "<string>"}
Go's `[]byte` fields travel as base64 strings, so `bytes` values in params are encoded that way.
Anything else in a reply is a protocol error, reported as `FrameError` with the call id when the
id itself was readable (so the waiting call fails at once instead of timing out).
"""

from __future__ import annotations

import base64
import json
from typing import Any, NamedTuple

import orjson

MAX_ID = 2**64 - 1

_orjson_dumps = orjson.dumps
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                            default=lambda o: _default(o))


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


class Reply(NamedTuple):
    id: int
    result: Any
    error: str | None


class FrameError(ValueError):
    """An incoming frame that is not a valid reply; `call_id` is set when the id was valid."""

    def __init__(self, reason: str, call_id: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.call_id = call_id


# `,"method":"<method>","params":` per method name: a request is then one `%` of three parts
# instead of json encoding a fresh dict (the method string is escaped once, not per call)
_request_heads: dict[str, bytes] = {}
_REQUEST_HEADS_MAX = 1024


def _request_head(method: str) -> bytes:
    head = _request_heads.get(method)
    if head is None:
        head = f',"method":{_encoder.encode(method)},"params":'.encode()
        if len(_request_heads) < _REQUEST_HEADS_MAX:
            _request_heads[method] = head
    return head


def _encode_params(params: Any) -> bytes:
    """orjson (~0.15 us against ~4.5 us for an Echo's params), with the standard encoder as the
    judge wherever the two could differ: orjson refuses what it cannot carry (ints past 64 bits,
    non-string keys: TypeError, re-done by the standard encoder) and writes NaN and infinities as
    null, so any output with a null is re-done by the standard encoder, which refuses them."""
    try:
        out = _orjson_dumps(params, default=_default)
    except TypeError:
        return _encoder.encode(params).encode()
    if b"null" in out:
        return _encoder.encode(params).encode()
    return out


def encode_request(call_id: int, method: str, params: Any) -> bytes:
    """Serialize one request; raises TypeError/ValueError for params JSON cannot carry.

    The same bytes as encoding {"id", "method", "params"} compactly, built from a cached head.
    """
    if type(call_id) is not int:
        raise TypeError("call id must be an int")
    return b'{"id":%d%s%s}' % (call_id, _request_head(method), _encode_params(params))


def request_parts(method: str, params: Any) -> tuple[bytes, bytes]:
    """The id-independent parts of a request, for many requests with one method and params (a
    fan-out encodes its params once): `request_frame(id, *request_parts(m, p))` is
    `encode_request(id, m, p)`."""
    return _request_head(method), _encode_params(params)


def request_frame(call_id: int, head: bytes, body: bytes) -> bytes:
    return b'{"id":%d%s%s}' % (call_id, head, body)


def encode_reply(call_id: int, result: Any, error: str | None) -> bytes:
    """Serialize one reply (used by the agent SDK and by tests)."""
    return _encoder.encode({"id": call_id, "result": result, "error": error}).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# json.loads(data, parse_constant=...) builds a new JSONDecoder on every call: keep one
_decoder = json.JSONDecoder(parse_constant=_no_constants)
_detect_encoding = json.detect_encoding
_orjson_loads = orjson.loads


def valid_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def decode_reply(data: bytes | bytearray) -> Reply:
    """Parse and validate one reply frame; raises FrameError.

    orjson first: a reply is parsed once per call and orjson does it in ~0.6 us against ~7.5 us
    for the standard decoder (measured on an Echo reply), a tenth of the hub's CPU per call.
    What orjson refuses (UTF-16/32, integers beyond 64 bits, NaN) goes to the standard decoder,
    so what is accepted and refused stays exactly the standard decoder's.
    """
    try:
        doc = _orjson_loads(data)
    except orjson.JSONDecodeError:
        try:
            # what json.loads does with bytes (UTF-8/16/32 by sniffing), then the shared decoder
            doc = _decoder.decode(bytes(data).decode(_detect_encoding(data), "surrogatepass"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise FrameError(f"invalid JSON: {exc}") from None
    if type(doc) is not dict:
        raise FrameError("reply is not a JSON object")
    call_id = doc.get("id")
    if not valid_id(call_id):
        raise FrameError("reply id is missing or not a uint64")
    if "method" in doc:
        raise FrameError("agents may not send requests", call_id=None)
    error = doc.get("error")
    if error is not None and type(error) is not str:
        raise FrameError("reply error is neither null nor a string", call_id=call_id)
    return Reply(call_id, doc.get("result"), error)
