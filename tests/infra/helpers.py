"""Helpers of the infrastructure tests: raw HTTP, agents from the admin CLI, simulated agents
(tests/infra/sim_agent.py) run as processes, and a read-only look into the embedded store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import kowabunga
import urllib3
import yaml

from tests.identity.helpers import identity_config
from tests.kahuna_proc import MASTER_KEY, ROOT, Kahuna

CALL_TIMEOUT = 3.0  # ws.callTimeout of these daemons: a --delay longer than this is a timeout


@contextmanager
def tenant_kahuna(tmp_path_factory, smtp_sink, name: str):
    """A real Kahuna for tests that create users and tenant objects: mail to the sink (users are
    confirmed from it), the short agent call timeout, and no document cache, since those tests
    read (and some write) the store next to the daemon."""
    work = tmp_path_factory.mktemp(name)
    config = identity_config(work, smtp_sink, ws={"callTimeout": CALL_TIMEOUT}, cache={"enabled": False})
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def http(kahuna, method: str, path: str, body=None, *, key: str | None = MASTER_KEY, token: str | None = None):
    """A raw request (for what the official client refuses to send); (status, decoded body)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = urllib3.request(method, kahuna.api + path, retries=False, timeout=30, headers=headers,
                           body=None if body is None else json.dumps(body))
    return resp.status, json.loads(resp.data) if resp.data else None


def create_agents(kahuna, agent_type: str, count: int = 1) -> list[dict]:
    """Agents and their keys, from the admin CLI (the daemon picks the keys up by itself)."""
    out = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(kahuna.config_path),
                          "agent", "create", "--name", unique(agent_type.lower()), "--type", agent_type,
                          "--count", str(count), "--json"],
                         capture_output=True, text=True, timeout=60, cwd=kahuna.workdir)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def agent_status(kahuna, agent_id: str) -> dict:
    status, body = http(kahuna, "GET", f"/agent/{agent_id}/status")
    assert status == 200, body
    return body


def wait_for(predicate, what: str, timeout: float = 15.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


class SimAgent:
    """`python -m tests.infra.sim_agent` as its own process; `state()` is its model, as JSON."""

    def __init__(self, kahuna, workdir: Path, agent: dict, *, sim: dict | None = None,
                 delay: dict[str, float] | None = None, fail: dict[str, str] | None = None):
        self.kahuna, self.agent, self.id = kahuna, agent, agent["id"]
        doc = {"global": {"id": agent["id"], "apiKey": agent["key"], "logLevel": "INFO",
                          "endpoint": f"ws://127.0.0.1:{kahuna.hub_port}/ws"}}
        if sim:
            doc["sim"] = sim
        self.config = workdir / f"agent-{self.id}.yml"
        self.config.write_text(yaml.safe_dump(doc))
        self.state_path = workdir / f"agent-{self.id}.json"
        self.log = workdir / f"agent-{self.id}.log"
        cmd = [sys.executable, "-m", "tests.infra.sim_agent", agent["type"].lower(), "-c", str(self.config),
               "--state", str(self.state_path)]
        for method, seconds in (delay or {}).items():
            cmd += ["--delay", f"{method}={seconds}"]
        for method, message in (fail or {}).items():
            cmd += ["--fail", f"{method}={message}"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)

    def wait_connected(self, timeout: float = 20.0) -> "SimAgent":
        wait_for(lambda: agent_status(self.kahuna, self.id)["connected"],
                 f"agent {self.id} to connect (log: {self.log})", timeout)
        return self

    def state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def wait_disconnected(self, timeout: float = 15.0) -> None:
        wait_for(lambda: not agent_status(self.kahuna, self.id)["connected"],
                 f"agent {self.id} to disconnect", timeout)


def stored(kahuna, collection: str, doc_id: str) -> dict | None:
    """A document as the embedded store holds it (for what the API does not show, e.g. the
    parents' default children). Read-only, next to the running daemon (SQLite WAL)."""
    conn = sqlite3.connect(f"file:{kahuna.workdir / 'data' / 'kahuna.sqlite3'}?mode=ro", uri=True)
    try:
        row = conn.execute(f'SELECT doc FROM "{collection}" WHERE _id = ?', (doc_id,)).fetchone()
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def region_and_zone(admin, *, domain: str = "acme.test") -> tuple[str, str]:
    region = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("region"), domain=domain))
    zone = kowabunga.RegionApi(admin).create_region_zone(region.id, kowabunga.Zone(name=unique("zone")))
    return region.id, zone.id
