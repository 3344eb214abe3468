"""SIGKILL of Kahuna in the middle of a volume create (the agent call in flight), then a restart:
the unfinished flow is undone by the new process once the agent is back — no image on the sim,
no volume document, no reserved usage, no flow document left."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

from agent.sim.model import GiB
from tests.infra.helpers import http, wait_for


def _count(kahuna, collection: str) -> int:
    conn = sqlite3.connect(f"file:{kahuna.workdir / 'data' / 'kahuna.sqlite3'}?mode=ro", uri=True)
    try:
        return conn.execute(f'SELECT count(*) FROM "{collection}"').fetchone()[0]
    except sqlite3.OperationalError:  # the collection was never written
        return 0
    finally:
        conn.close()


def _usage(kahuna, world) -> int:
    status, body = http(kahuna, "GET", f"/project/{world['project']}/usage")
    assert status == 200, body
    return body["storage"]


def test_sigkill_during_a_volume_create_is_recovered_at_restart(kahuna, world):
    k = world["kaktus"]
    k.faults.delay("CreateOsVolume", 1.0, times=1)
    answers = []
    request = threading.Thread(target=lambda: answers.append(_try_create(kahuna, world)))
    request.start()
    wait_for(lambda: _count(kahuna, "flow") == 1 and _usage(kahuna, world) == 4 * GiB,
             "the flow to reserve the quota")
    time.sleep(0.3)  # the CreateOsVolume call is in flight
    kahuna.proc.send_signal(signal.SIGKILL)
    kahuna.proc.wait(10)
    request.join(30)
    assert _count(kahuna, "volume") == 1 and _count(kahuna, "flow") == 1  # what the dead process left
    # the sim drops a call whose connection went; as if the agent had made the image meanwhile:
    if k.image("ssd", "orphan") is None:
        world["host"].run_sync(lambda: k.model.create_raw_volume("ssd", "orphan", 4 * GiB))
    kahuna.start()
    k.start(f"ws://127.0.0.1:{kahuna.hub_port}/ws")
    wait_for(lambda: _count(kahuna, "flow") == 0, "the restarted Kahuna to recover the flow", timeout=20)
    assert k.image("ssd", "orphan") is None
    assert _count(kahuna, "volume") == 0 and _usage(kahuna, world) == 0
    assert http(kahuna, "GET", "/volume")[1] == []


def _try_create(kahuna, world):
    try:
        return http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                    {"name": "orphan", "type": "os", "size": 4 * GiB})
    except Exception as exc:  # the server died under the request
        return exc


def test_sigkill_during_a_kompute_create_is_recovered_at_restart(kahuna, world):
    """Killed while CreateInstance runs (volumes, instance document and ISO already made)."""
    k = world["kaktus"]
    k.faults.delay("CreateInstance", 1.0, times=1)
    answers = []
    request = threading.Thread(target=lambda: answers.append(_try(kahuna, "POST",
        f"/project/{world['project']}/zone/{world['zone']}/kompute",
        {"name": "crash1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB, "data_disk": GiB})))
    request.start()
    wait_for(lambda: k.image("ssd", "crash1-cloudinit") is not None, "the flow to reach the ISO")
    time.sleep(0.3)  # CreateInstance in flight
    kahuna.proc.send_signal(signal.SIGKILL)
    kahuna.proc.wait(10)
    request.join(30)
    assert _count(kahuna, "kompute") == 1 and _count(kahuna, "instance") == 1 and _count(kahuna, "flow") == 1
    assert {"crash1-os", "crash1-data", "crash1-cloudinit"} <= set(k.images("ssd"))
    kahuna.start()
    k.start(f"ws://127.0.0.1:{kahuna.hub_port}/ws")
    wait_for(lambda: _count(kahuna, "flow") == 0, "the restarted Kahuna to recover the flow", timeout=20)
    assert set(k.images("ssd")) <= {"noble"} and k.domain("crash1") is None
    for collection in ("kompute", "instance", "volume"):
        assert _count(kahuna, collection) == 0, collection
    status, usage = http(kahuna, "GET", f"/project/{world['project']}/usage")
    assert usage == {"vcpus": 0, "memory": 0, "storage": 0, "instances": 0}


def _try(kahuna, method, path, body):
    try:
        return http(kahuna, method, path, body)
    except Exception as exc:
        return exc
