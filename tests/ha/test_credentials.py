"""Keys written by another process (the admin CLI; in a pair, the twin) work at once (issue 11).

The CLI writes the store while the daemon runs. An agent it created connects immediately (a miss
in the hub's in-memory credentials reads the store once); after `agent rotate-key` the old key is
refused within two seconds (the marker poll is 1 s) and the new one accepted as soon.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.kahuna_proc import ROOT, Kahuna, write_config


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    work = tmp_path_factory.mktemp("ha-credentials")
    config = write_config(work / "kahuna.yml", work / "data")
    with Kahuna(work, config) as k:
        yield k


def cli(k: Kahuna, *args) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(k.config), *args, "--json"],
                         capture_output=True, text=True, timeout=60, cwd=k.workdir)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def handshake(port: int, agent_id: str, key: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"X-WS-Kowabunga-Agent: Kaktus\r\nX-WS-Kowabunga-Id: {agent_id}\r\n"
            f"X-WS-Kowabunga-Api-Key: {key}\r\n\r\n").encode())
        return int(sock.recv(1024).split(b" ", 2)[1])


def test_cli_created_agent_is_accepted_at_once(kahuna):
    created = cli(kahuna, "agent", "create", "--name", f"k-{uuid.uuid4().hex[:6]}", "--type", "Kaktus")
    assert handshake(kahuna.hub_port, created["id"], created["key"]) == 101


def test_cli_rotated_key_old_refused_within_two_seconds_new_at_once(kahuna):
    created = cli(kahuna, "agent", "create", "--name", f"k-{uuid.uuid4().hex[:6]}", "--type", "Kaktus")
    assert handshake(kahuna.hub_port, created["id"], created["key"]) == 101
    rotated = cli(kahuna, "agent", "rotate-key", created["id"])
    t0 = time.monotonic()
    while handshake(kahuna.hub_port, created["id"], created["key"]) == 101:
        assert time.monotonic() - t0 < 2.5, "the old key still works"
        time.sleep(0.1)
    deadline = time.monotonic() + 2.5
    while handshake(kahuna.hub_port, created["id"], rotated["key"]) != 101:
        assert time.monotonic() < deadline, "the new key is refused"
        time.sleep(0.1)


def test_unknown_ids_are_refused(kahuna):
    for _ in range(30):  # rate-limited misses: each is refused, none breaks the hub
        assert handshake(kahuna.hub_port, uuid.uuid4().hex[:24], "x" * 64) in (403, 404)
