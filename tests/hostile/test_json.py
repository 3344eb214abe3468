"""Issue 12 §2: JSON that parses but is pathological gets a 400 naming the problem, nothing is
stored and no ERROR line is logged — on authenticated routes and on unauthenticated /login."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.kahuna_proc import MASTER_KEY

DEEP = b"[" * 1000 + b"]" * 1000
BAD = {
    "deep": (b'{"name": "r", "x": ' + DEEP + b"}", "nested deeper"),
    "huge-int": (b'{"name": "r", "x": ' + b"7" * 4400 + b"}", "64-bit"),
    "nan": (b'{"name": "r", "x": NaN}', "NaN"),
    "infinity": (b'{"name": "r", "x": Infinity}', "Infinity"),
    "overflow-float": (b'{"name": "r", "x": 1e999}', "out of range"),
    "400-digit": (b'{"name": "r", "x": ' + b"9" * 400 + b"}", "64-bit"),
    "surrogate": (b'{"name": "\\ud800"}', "surrogate"),
    "nul": (b'{"name": "a\\u0000b"}', "NUL"),
}


def call(kahuna, method, path, body=None, *, key=MASTER_KEY, ctype="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", kahuna.http_port, timeout=10)
    headers = {"Content-Type": ctype} if body is not None and ctype else {}
    if key:
        headers["X-API-Key"] = key
    conn.request(method, "/api/v1" + path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, (json.loads(data) if data else None)


@pytest.mark.parametrize("case", sorted(BAD))
def test_pathological_json_on_create_is_400(kahuna, case):
    body, words = BAD[case]
    status, answer = call(kahuna, "POST", "/region", body)
    assert status == 400, answer
    assert answer["status"] == 400 and words in answer["reason"]
    assert call(kahuna, "GET", "/region")[1] == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_pathological_json_on_login_is_400(kahuna, case):
    body, words = BAD[case]
    status, answer = call(kahuna, "POST", "/login", body, key=None)
    assert status == 400 and words in answer["reason"]


@pytest.fixture(scope="module")
def zone_id(admin):
    from tests.infra.helpers import region_and_zone
    return region_and_zone(admin)[1]


@pytest.mark.parametrize("value,words", [(b"NaN", "NaN"), (b"1e999", "out of range"),
                                         (b"9" * 400, "64-bit"), (b"-Infinity", "Infinity")])
def test_non_finite_price_is_refused_and_nothing_stored(kahuna, zone_id, value, words):
    """A number field (kaktus.cpu_cost.price) that used to pass validation and fail in the store."""
    body = b'{"name": "k1", "agents": [], "cpu_cost": {"price": ' + value + b', "currency": "EUR"}}'
    status, answer = call(kahuna, "POST", f"/zone/{zone_id}/kaktus", body)
    assert status == 400 and words in answer["reason"], answer
    assert call(kahuna, "GET", "/kaktus")[1] == []


def test_no_error_lines_logged(kahuna):
    assert " ERROR " not in kahuna.new_stderr()


def test_nfc_and_nfd_names_are_one_name(kahuna):
    status, first = call(kahuna, "POST", "/region", json.dumps({"name": "caf\u00e9", "domain": "a.test"}).encode())
    assert status in (200, 201)
    status, answer = call(kahuna, "POST", "/region", json.dumps({"name": "cafe\u0301", "domain": "b.test"}).encode())
    assert status == 409, answer
    assert call(kahuna, "GET", f"/region/{first['id']}")[1]["name"] == "caf\u00e9"
