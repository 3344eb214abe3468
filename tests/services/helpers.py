"""Helpers of the services tests: a project's private subnet (reserved, or given) and flow counts."""

from __future__ import annotations

import json
import sqlite3


def give_private_subnet(kahuna, project_id: str, region_id: str, subnet_id: str) -> str:
    """The project's private subnet in the region: the one the project networks reserved at its
    creation (kahuna.resources.project_net) when there is one — then nothing is written; else
    (a region whose private subnets were created after the project) `subnet_id` is written as
    `private_subnets[region]` into the embedded store of a daemon running without its document
    cache (so it reads the change). Answers the subnet id in force."""
    conn = sqlite3.connect(str(kahuna.workdir / "data" / "kahuna.sqlite3"), timeout=10)
    try:
        (raw,) = conn.execute('SELECT doc FROM "project" WHERE _id = ?', (project_id,)).fetchone()
        doc = json.loads(raw)
        subnets = doc.get("private_subnets") or {}
        if subnets.get(region_id):
            return subnets[region_id]
        subnets[region_id] = subnet_id
        doc["private_subnets"] = subnets
        conn.execute('UPDATE "project" SET doc = ? WHERE _id = ?', (json.dumps(doc), project_id))
        conn.commit()
        return subnet_id
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
