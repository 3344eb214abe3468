"""The operator's files in conf/, checked with the real programs (Debian's Caddy 2.6.2 and
keepalived 2.2.7; `.ci/run` installs them). Skipped, with the reason, where they are missing.

Caddy is also *run*: the shipped Caddyfile, with only its addresses swapped for loopback ports,
in front of a real Kahuna, to show that /api, /healthz, /ws (any header case) reach Kahuna, the
rest is Koala's index.html, and a client cannot spoof X-Forwarded-For through it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.kahuna_proc import MASTER_KEY, ROOT

CONF = ROOT / "conf"
caddy = shutil.which("caddy")
keepalived = shutil.which("keepalived") or (os.path.exists("/usr/sbin/keepalived") and "/usr/sbin/keepalived")
needs_caddy = pytest.mark.skipif(not caddy, reason="caddy is not installed (apt-get install caddy; .ci/run does)")
needs_keepalived = pytest.mark.skipif(not keepalived, reason="keepalived is not installed "
                                      "(apt-get install keepalived; .ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_caddy
def test_caddy_validates_the_shipped_caddyfile(tmp_path):
    out = subprocess.run([caddy, "validate", "--config", str(CONF / "Caddyfile"), "--adapter", "caddyfile"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)})
    assert out.returncode == 0 and "Valid configuration" in out.stdout + out.stderr, out.stderr[-2000:]


def keepalived_test(path: Path) -> tuple[int, str]:
    # keepalived 2.2.7's -t signals its own process group when done: a session of its own
    out = subprocess.run([keepalived, "-t", "-l", "-f", str(path)], capture_output=True, text=True,
                         timeout=30, start_new_session=True)
    return out.returncode, (out.stdout + out.stderr).strip()


@needs_keepalived
def test_keepalived_accepts_the_shipped_config(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("keepalived -t checks the script user: run as root")
    try:
        import pwd
        pwd.getpwnam("keepalived_script")
    except KeyError:
        pytest.skip("user keepalived_script missing (README 'Running a pair' step 2; .ci/run creates it)")
    text = (CONF / "keepalived.conf").read_text()
    # the check script at its installed path is not there on a build machine: point at ours
    check = tmp_path / "lib" / "kahuna-check"
    check.parent.mkdir()
    shutil.copy(CONF / "kahuna-check", check)
    os.chmod(tmp_path, 0o755)
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text.replace("/usr/local/lib/kahuna/kahuna-check", str(check)))
    rc, output = keepalived_test(conf)
    assert rc in (0, 143, -15) and output == "", output
    assert all(len(p) <= 8 for p in re.findall(r"auth_pass\s+(\S+)", text))
    for needed in ("enable_script_security", "script_user", "chk_alive", "chk_active", "weight 50",
                   "unicast_peer", "track_script"):
        assert needed in text
    # and the test is real: a 9-character password is reported
    conf.write_text(text.replace("kahuna01", "kahuna012").replace("/usr/local/lib/kahuna/kahuna-check", str(check)))
    assert "Truncating auth_pass" in keepalived_test(conf)[1]


def raw_http(port: int, request: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), data


@pytest.fixture(scope="module")
def caddy_front(tmp_path_factory, kahuna):
    if not caddy:
        pytest.skip("caddy is not installed (apt-get install caddy; .ci/run does)")
    work = tmp_path_factory.mktemp("caddy")
    koala = work / "koala"
    koala.mkdir()
    (koala / "index.html").write_text("<html>koala</html>")
    port, admin = free_port(), free_port()
    text = (CONF / "Caddyfile").read_text()
    text = (text.replace("kowabunga.acme.com {", f"http://127.0.0.1:{port} {{")
            .replace("admin localhost:2019", f"admin 127.0.0.1:{admin}")
            .replace("127.0.0.1:8081", f"127.0.0.1:{kahuna.hub_port}")
            .replace("127.0.0.1:8080", f"127.0.0.1:{kahuna.http_port}")
            .replace("/usr/share/kowabunga-koala", str(koala)))
    (work / "Caddyfile").write_text(text)
    proc = subprocess.Popen([caddy, "run", "--config", str(work / "Caddyfile"), "--adapter", "caddyfile"],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / "caddy.log", "wb"),
                            env={**os.environ, "HOME": str(work), "XDG_DATA_HOME": str(work),
                                 "XDG_CONFIG_HOME": str(work)})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("caddy did not start: " + (work / "caddy.log").read_text()[-2000:])
    yield port
    proc.terminate()
    proc.wait(10)


def get(port: int, path: str, headers: dict | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": MASTER_KEY, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_caddy_routes_api_healthz_and_koala(caddy_front):
    status, body = get(caddy_front, "/healthz")
    assert status == 200 and json.loads(body)["role"] == "single"
    status, body = get(caddy_front, "/api/v1/region")
    assert status == 200 and isinstance(json.loads(body), list)
    status, body = get(caddy_front, "/some/koala/page")
    assert status == 200 and b"koala" in body
    assert get(caddy_front, "/metrics")[1].startswith(b"<html>")  # not published through Caddy


@pytest.mark.parametrize("connection,upgrade", [("Upgrade", "websocket"), ("upgrade", "WebSocket"),
                                                 ("keep-alive, Upgrade", "websocket")])
def test_caddy_sends_websocket_upgrades_to_the_hub_whatever_the_case(caddy_front, connection, upgrade):
    status, data = raw_http(caddy_front, (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "X-WS-Kowabunga-Agent: Kaktus\r\nX-WS-Kowabunga-Id: 0123456789abcdef01234567\r\n"
        f"X-WS-Kowabunga-Api-Key: {'x' * 64}\r\n\r\n"))
    # the hub's own refusal (unknown agent), not Koala's page nor Caddy's 404
    assert status in (401, 403, 404) and b"koala" not in data, data[:300]


def test_agent_address_through_caddy_is_the_real_one(caddy_front, kahuna, tmp_path):
    """The hub receives trustedProxies: /agent/{id}/status shows the agent's address (as Caddy
    set it in X-Forwarded-For, without a port), not Caddy's own peer address with its port."""
    import sys

    import yaml
    out = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(kahuna.config), "agent", "create",
                          "--name", f"caddy-{os.getpid()}", "--type", "Kaktus", "--json"],
                         capture_output=True, text=True, timeout=60, cwd=kahuna.workdir)
    assert out.returncode == 0, out.stderr
    agent = json.loads(out.stdout)
    cfg = tmp_path / "agent.yml"
    cfg.write_text(yaml.safe_dump({"global": {"id": agent["id"], "apiKey": agent["key"], "auth": "hmac",
                                              "endpoint": f"ws://127.0.0.1:{caddy_front}/ws"}}))
    with open(tmp_path / "agent.log", "wb") as log:
        sim = subprocess.Popen([sys.executable, "-m", "agent.sim", "kaktus", "-c", str(cfg)], cwd=ROOT,
                               stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 15
        body = {}
        while time.monotonic() < deadline:
            body = json.loads(get(kahuna.http_port, f"/api/v1/agent/{agent['id']}/status")[1])
            if body.get("connected"):
                break
            time.sleep(0.2)
        assert body.get("connected"), (tmp_path / "agent.log").read_text()[-1500:]
        assert body["remote_address"] == "127.0.0.1", body
    finally:
        sim.terminate()
        sim.wait(10)
