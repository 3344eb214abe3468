"""Issue 12 §1: a response that leaves before its request body was read must not stall the
keep-alive connection, and connections that end that way must not keep their descriptor."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest

from tests.hostile.rawhttp import connect, json_of, read_response

CASES = [("POST", "/healthz", 405), ("GET", "/healthz", 200), ("POST", "/api/v1/no-such-thing", 404),
         ("DELETE", "/healthz", 405), ("PUT", "/nope", 404)]


@pytest.mark.parametrize("gap", [0.005, 0.02, 0.1])
@pytest.mark.parametrize("method,path,status", CASES)
def test_body_after_early_response_keeps_connection(kahuna, method, path, status, gap):
    s = connect(kahuna.http_port)
    buf = bytearray()
    try:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 2\r\n\r\n".encode())
        time.sleep(gap)
        s.sendall(b"{}")
        first, _, body = read_response(s, buf)
        assert first == status
        if status >= 400:
            assert b'"status"' in body
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        second, _, body = read_response(s, buf)
        assert second == 200 and b'"ok"' in body
    finally:
        s.close()


def test_body_larger_than_drain_bound_closes_connection(kahuna):
    """A body the daemon will not wait for: the early answer says Connection: close and the
    socket really closes (no CLOSE-WAIT leftover)."""
    s = connect(kahuna.http_port)
    try:
        s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        status, headers, _ = read_response(s)
        assert status in (405, 413)
        assert headers.get("connection", "").lower() == "close"
        s.settimeout(5)
        assert s.recv(100) == b""
    finally:
        s.close()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _late_round(port: int, n: int, paths) -> None:
    socks = [connect(port) for _ in range(n)]
    try:
        for i, s in enumerate(socks):
            method, path = paths[i % len(paths)]
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n".encode())
        time.sleep(0.005)
        for s in socks:
            s.sendall(b"{}")
        for i, s in enumerate(socks):
            buf = bytearray()
            read_response(s, buf)
            if i % 2:  # half of them reuse the connection, half give up at once
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(s, buf)[0] == 200
    finally:
        for s in socks:
            s.close()


def test_descriptors_stay_flat_under_late_body_loop(kahuna, record_property):
    """1,100 late-body requests against a daemon limited to 256 descriptors: all answered,
    /healthz still answers, and the descriptor count comes back to where it was."""
    pid = kahuna.proc.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
    paths = [("POST", "/healthz"), ("GET", "/healthz"), ("POST", "/nope"), ("DELETE", "/api/v1/region")]
    before = _fds(pid)
    for _ in range(22):
        _late_round(kahuna.http_port, 50, paths)
    deadline = time.monotonic() + 5
    while _fds(pid) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _fds(pid)
    print(f"descriptors before={before} after={after} (1,100 late-body requests, limit 256)")
    record_property("fds", (before, after))
    assert after <= before + 2
    s = connect(kahuna.http_port)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
    finally:
        s.close()


@pytest.mark.parametrize("raw", [
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
])
def test_server_level_errors_are_json(kahuna, raw):
    s = connect(kahuna.http_port)
    try:
        s.sendall(raw)
        status, headers, body = read_response(s)
        assert 400 <= status < 500
        answer = json_of(body)
        assert answer["status"] == status and answer["reason"]
        assert headers["content-type"] == "application/json"
    finally:
        s.close()
