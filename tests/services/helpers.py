"""Helpers of the services tests: a simulated Kaktus process whose state shows its CephFS
subvolumes and NFS exports, and the project-subnet stand-in."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from tests.infra.helpers import SimAgent
from tests.kahuna_proc import ROOT


class SimKaktus(SimAgent):
    """Like tests.infra.helpers.SimAgent, running tests.services.sim_kaktus."""

    def __init__(self, kahuna, workdir: Path, agent: dict, *, sim: dict | None = None,
                 fail: dict[str, str] | None = None, delay: dict[str, float] | None = None):
        self.kahuna, self.agent, self.id = kahuna, agent, agent["id"]
        doc = {"global": {"id": agent["id"], "apiKey": agent["key"], "logLevel": "INFO",
                          "endpoint": f"ws://127.0.0.1:{kahuna.hub_port}/ws"}}
        if sim:
            doc["sim"] = sim
        self.config = workdir / f"kaktus-{self.id}.yml"
        self.config.write_text(yaml.safe_dump(doc))
        self.state_path = workdir / f"kaktus-{self.id}.json"
        self.log = workdir / f"kaktus-{self.id}.log"
        cmd = [sys.executable, "-m", "tests.services.sim_kaktus", "kaktus", "-c", str(self.config),
               "--state", str(self.state_path)]
        for method, seconds in (delay or {}).items():
            cmd += ["--delay", f"{method}={seconds}"]
        for method, message in (fail or {}).items():
            cmd += ["--fail", f"{method}={message}"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)


def give_private_subnet(kahuna, project_id: str, region_id: str, subnet_id: str) -> None:
    """Stand-in for compute's private-subnet reservation at project creation (issue 8), until it
    lands: writes `private_subnets[region] = subnet` into the embedded store of a daemon that
    runs without its document cache (so it reads the change)."""
    conn = sqlite3.connect(str(kahuna.workdir / "data" / "kahuna.sqlite3"), timeout=10)
    try:
        (raw,) = conn.execute('SELECT doc FROM "project" WHERE _id = ?', (project_id,)).fetchone()
        doc = json.loads(raw)
        subnets = doc.get("private_subnets") or {}
        subnets[region_id] = subnet_id
        doc["private_subnets"] = subnets
        conn.execute('UPDATE "project" SET doc = ? WHERE _id = ?', (json.dumps(doc), project_id))
        conn.commit()
    finally:
        conn.close()


def flows_left(kahuna) -> int:
    """Unfinished flows in the embedded store (kahuna.orchestrator.flows): 0 once all ended."""
    conn = sqlite3.connect(f"file:{kahuna.workdir / 'data' / 'kahuna.sqlite3'}?mode=ro", uri=True)
    try:
        return conn.execute('SELECT COUNT(*) FROM "flow"').fetchone()[0]
    except sqlite3.OperationalError:  # no flow ever started
        return 0
    finally:
        conn.close()
