"""Frame codec: what goes out is upstream's request shape; what comes in is validated."""

import json

import pytest

from kahuna.hub.codec import MAX_ID, FrameError, Reply, decode_reply, encode_reply, encode_request


def test_request_shape_and_bytes_as_base64():
    frame = encode_request(7, "Kaktus.CreateIsoVolume", {"Content": b"\x00\xffhi", "Size": 4})
    assert json.loads(frame) == {"id": 7, "method": "Kaktus.CreateIsoVolume",
                                 "params": {"Content": "AP9oaQ==", "Size": 4}}
    assert b" " not in frame   # compact: these frames are the hot path


def test_request_refuses_what_json_cannot_carry():
    with pytest.raises(TypeError):
        encode_request(1, "Kaktus.Echo", {"x": object()})
    with pytest.raises(ValueError):
        encode_request(1, "Kaktus.Echo", {"x": float("nan")})


@pytest.mark.parametrize("frame,expected", [
    (b'{"id":0,"result":{"a":1},"error":null}', Reply(0, {"a": 1}, None)),
    (b'{"id":18446744073709551615,"result":null,"error":"boom"}', Reply(MAX_ID, None, "boom")),
    (b'{"id":3}', Reply(3, None, None)),
    (encode_reply(5, [1, "\u00e9"], None), Reply(5, [1, "\u00e9"], None)),
])
def test_valid_replies(frame, expected):
    assert decode_reply(frame) == expected


@pytest.mark.parametrize("frame", [
    b"{not json", b"\xff\xfe", b"[1,2]", b'"x"', b"null", b'{"result":1}',
    b'{"id":"1","result":1}', b'{"id":-1}', b'{"id":true}', b'{"id":1.5}',
    b'{"id":18446744073709551616}', b'{"id":NaN}', b'{"id":1,"method":"Kahuna.Hello","params":{}}',
])
def test_unidentifiable_frames_are_rejected_without_an_id(frame):
    with pytest.raises(FrameError) as info:
        decode_reply(frame)
    assert info.value.call_id is None


@pytest.mark.parametrize("error", ["5", "{}", "[\"x\"]", "true"])
def test_bad_error_field_names_the_call(error):
    with pytest.raises(FrameError) as info:
        decode_reply(f'{{"id":9,"result":null,"error":{error}}}'.encode())
    assert info.value.call_id == 9


@pytest.mark.parametrize("params", [
    {"Seq": 1, "Data": "x" * 32}, {"a": "é", "b": [1, 2.5, {"c": True}]}, {"n": None},
    {1: "int key"}, {"big": 2**70}, {"t": (1, 2)}, {"raw": b"\x00\xff"}, [], "text", 0,
])
def test_requests_are_the_bytes_of_the_standard_encoder(params):
    """orjson on the hot path must not change one byte of what agents receive."""
    standard = json.dumps({"id": 3, "method": "Kaktus.M", "params": params}, separators=(",", ":"),
                          ensure_ascii=False, default=lambda o: __import__("base64").b64encode(o).decode()
                          if isinstance(o, bytes) else list(o)).encode()
    assert encode_request(3, "Kaktus.M", params) == standard


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_not_sent_as_null(value):
    with pytest.raises(ValueError):
        encode_request(1, "Kaktus.Echo", {"nested": [value]})
