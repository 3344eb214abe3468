"""The daemon as an operator meets it: first start, secrets shown once, signals, the hub door."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import time

import pytest
import urllib3

from tests.kahuna_proc import MASTER_KEY, Kahuna, write_config


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_first_start_without_config_generates_and_shows_key_once(tmp_path):
    """`python kahuna.py` with no config: default ports, embedded store, key printed once."""
    if not _ports_free(8080, 8081):
        pytest.skip("ports 8080/8081 are busy on this machine")
    with Kahuna(tmp_path) as k:
        assert (k.http_port, k.hub_port) == (8080, 8081)
        key_file = tmp_path / "data" / "master-api-key"
        key = key_file.read_text().strip()
        assert len(key) >= 48 and key.isalnum()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert f"X-API-Key: {key}" in k.stdout()
        assert key not in k.new_stderr()  # printed to the operator, never logged
        resp = urllib3.request("GET", k.api + "/region", headers={"X-API-Key": key})
        assert resp.status == 200 and json.loads(resp.data) == []
        assert (tmp_path / "data" / "kahuna.sqlite3").exists()
    first_out = k.stdout()
    with Kahuna(tmp_path) as k2:
        resp = urllib3.request("GET", k2.api + "/region", headers={"X-API-Key": key})
        assert resp.status == 200
    assert k2.stdout() == first_out  # not shown again


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_within_5s(tmp_path, sig):
    config = write_config(tmp_path / "k.yml", tmp_path / "data")
    k = Kahuna(tmp_path, config).start()
    started = time.monotonic()
    code = k.stop(sig, timeout=10)
    assert code == 0 and time.monotonic() - started < 5
    err = k.new_stderr()
    assert "Traceback" not in err and " stopped" in err
    assert MASTER_KEY not in err


def test_hub_refuses_unauthenticated_agents_before_upgrade(kahuna):
    resp = urllib3.request("GET", f"http://127.0.0.1:{kahuna.hub_port}/ws", retries=False, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status in (400, 403)  # never 101: no agent gets in without credentials


def test_secrets_never_reach_the_log(kahuna):
    urllib3.request("GET", kahuna.api + "/region", headers={"X-API-Key": MASTER_KEY})
    urllib3.request("GET", kahuna.api + "/region", headers={"X-API-Key": "attacker-guess"})
    log = kahuna.new_stderr()
    assert MASTER_KEY not in log and "attacker-guess" not in log


def test_generated_secrets_are_private(tmp_path):
    config = write_config(tmp_path / "k.yml", tmp_path / "data", apiKey=None)
    with Kahuna(tmp_path, config):
        pass
    for name in ("master-api-key", "jwt-signature", "server-secret"):
        mode = stat.S_IMODE(os.stat(tmp_path / "data" / name).st_mode)
        assert mode == 0o600, name
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700


def test_debug_flag_forces_debug_logs(tmp_path):
    config = write_config(tmp_path / "k.yml", tmp_path / "data", logLevel="ERROR")
    with Kahuna(tmp_path, config, args=("-d",)) as k:
        urllib3.request("GET", k.api + "/region?token=abc", headers={"X-API-Key": MASTER_KEY})
        deadline = time.monotonic() + 5
        while "request method=GET path=/api/v1/region status=200" not in k.new_stderr():
            assert time.monotonic() < deadline, k.new_stderr()
            time.sleep(0.05)
        assert "token=abc" not in k.new_stderr()


def test_healthz_503_and_json_errors_when_the_database_goes_away(tmp_path):
    from tests.nx_server import nx_server

    with nx_server() as nx:
        config = write_config(tmp_path / "k.yml", tmp_path / "data", db={"uri": nx.uri, "name": "kh"})
        with Kahuna(tmp_path, config) as k:
            assert urllib3.request("GET", k.url + "/healthz").status == 200
            nx.stop()
            started = time.monotonic()
            resp = urllib3.request("GET", k.url + "/healthz", timeout=30)
            body = json.loads(resp.data)
            assert resp.status == 503 and body["store"] == "unreachable"
            assert time.monotonic() - started < 10
            resp = urllib3.request("POST", k.api + "/region", timeout=30, body=json.dumps(
                {"name": "r", "domain": "d"}), headers={"X-API-Key": MASTER_KEY})
            body = json.loads(resp.data)
            assert resp.status == 503 and set(body) == {"status", "error", "reason"}
            assert "Traceback" not in resp.data.decode()
