"""SIGKILL of Kahuna in the middle of a flow, then a restart: a volume create (the agent call in
flight) is undone — no image on the sim, no volume document, no reserved usage, no flow document.

Then a Kompute create killed at each agent step, and a Kompute delete killed at each agent step,
each time just after the agent *did* the work but before Kahuna heard back (the sim's
`delay_reply`): the restarted Kahuna undoes the create, or finishes the delete — no image, no
domain, no adapter (so no address), no DNS record, no document, usage back to zero."""

from __future__ import annotations

import signal
import threading
import time

from agent.sim.model import GiB
from tests.compute.crash import in_thread, kill_and_restart, storage_usage, stored_count
from tests.infra.helpers import http, stored, wait_for


def _try(kahuna, method, path, body):
    try:
        return http(kahuna, method, path, body)
    except Exception as exc:
        return exc


# Each flow is held at a different agent call (the sim did the work, its reply is held back), then
# one SIGKILL stops them all: (Kompute name, sim, method, the held call's params, the work done).
CREATE_STEPS = [
    ("cr0", "kaktus", "CreateOsVolume", {"Volume": "cr0-os"}, lambda k, d: k.image("ssd", "cr0-os")),
    ("cr1", "kaktus", "CreateRawVolume", {"Volume": "cr1-data"}, lambda k, d: k.image("ssd", "cr1-data")),
    ("cr2", "kiwi", "CreateDnsRecord", {"Entry": "cr2"}, lambda k, d: d.resolve("cr2.corp.test")),
    ("cr3", "kaktus", "CreateIsoVolume", {"Volume": "cr3-cloudinit"}, lambda k, d: k.image("ssd", "cr3-cloudinit")),
    ("cr4", "kaktus", "CreateInstance", {"Name": "cr4"}, lambda k, d: k.domain("cr4")),
    ("cr5", "kaktus", "InstanceOperation", {"Name": "cr5"},
     lambda k, d: (k.domain("cr5") or {}).get("state") == "Running"),
]
DELETE_STEPS = [
    ("dl0", "kaktus", "DeleteInstance", {"Name": "dl0"}, lambda k, d: k.domain("dl0") is None),
    ("dl1", "kaktus", "DeleteVolume", {"Volume": "dl1-cloudinit"}, lambda k, d: k.image("ssd", "dl1-cloudinit") is None),
    ("dl2", "kaktus", "DeleteVolume", {"Volume": "dl2-os"}, lambda k, d: k.image("ssd", "dl2-os") is None),
    ("dl3", "kaktus", "DeleteVolume", {"Volume": "dl3-data"}, lambda k, d: k.image("ssd", "dl3-data") is None),
    ("dl4", "kiwi", "DeleteDnsRecord", {"Entry": "dl4"}, lambda k, d: d.resolve("dl4.corp.test") == []),
]


def _body(name: str) -> dict:
    return {"name": name, "memory": GiB, "vcpus": 1, "disk": 4 * GiB, "data_disk": GiB}


def _hold(world, kiwi, steps) -> None:
    """Hold back each step's reply (one rule per sim and method, matching the steps' params)."""
    sims = {"kaktus": world["kaktus"], "kiwi": kiwi}
    rules: dict[tuple[str, str], list[dict]] = {}
    for _, agent, method, params, _ in steps:
        rules.setdefault((agent, method), []).append(params)
    for (agent, method), wanted in rules.items():
        sims[agent].faults.delay_reply(method, 30.0, when=lambda p, wanted=wanted: any(
            all(p.get(k) == v for k, v in w.items()) for w in wanted))


def _kill_and_restart(kahuna, world, kiwi, steps, threads) -> None:
    k = world["kaktus"]
    for name, _, method, _, done in steps:
        wait_for(lambda: done(k, kiwi), f"{method} of {name} to be done on the sim", timeout=20)
    def all_in_flight():  # every flow was still in flight (none timed out and undid itself before the kill)
        assert stored_count(kahuna, "flow") == len(steps)

    kill_and_restart(kahuna, (kiwi, k), threads, while_down=all_in_flight)
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "the restarted Kahuna to recover the flows", timeout=30)
    for sim in (kiwi, k):
        sim.wait_connected()


def _assert_nothing_left(kahuna, world, kiwi, corp, steps) -> None:
    k = world["kaktus"]
    assert set(k.images("ssd")) <= {"noble"}
    for name, _, method, _, _ in steps:
        assert k.domain(name) is None, method
        assert kiwi.resolve(f"{name}.corp.test") == [], method
    for collection in ("kompute", "instance", "volume", "adapter"):
        assert stored_count(kahuna, collection) == 0, collection
    status, usage = http(kahuna, "GET", f"/project/{corp['id']}/usage")
    assert usage == {"vcpus": 0, "memory": 0, "storage": 0, "instances": 0}
    assert stored(kahuna, "kaktus", world["kaktus_id"])["usage"] == {"vcpus": 0, "memory": 0, "instances": 0}


def test_sigkill_at_each_step_of_a_kompute_create_is_undone_at_restart(kahuna, world, kiwi, corp):
    path = f"/project/{corp['id']}/zone/{world['zone']}/kompute"
    _hold(world, kiwi, CREATE_STEPS)
    # those held after the DNS step first, past it before the one held *at* it (record pushes
    # are serialized, so a held CreateDnsRecord would keep them from reaching their steps)
    threads = [in_thread(_try, kahuna, "POST", path, _body(n)) for n, *_ in CREATE_STEPS[3:]]
    for name, *_ in CREATE_STEPS[3:]:
        wait_for(lambda: kiwi.resolve(f"{name}.corp.test"), f"the record of {name}")
    threads += [in_thread(_try, kahuna, "POST", path, _body(n)) for n, *_ in CREATE_STEPS[:3]]
    _kill_and_restart(kahuna, world, kiwi, CREATE_STEPS, threads)
    _assert_nothing_left(kahuna, world, kiwi, corp, CREATE_STEPS)


def test_sigkill_at_each_step_of_a_kompute_delete_is_finished_at_restart(kahuna, world, kiwi, corp):
    path = f"/project/{corp['id']}/zone/{world['zone']}/kompute"
    ids = []
    for name, *_ in DELETE_STEPS:
        status, body = http(kahuna, "POST", path, _body(name))
        assert status == 201 and kiwi.resolve(f"{name}.corp.test") == [body["ip"]], body
        ids.append(body["id"])
    _hold(world, kiwi, DELETE_STEPS)
    threads = [in_thread(_try, kahuna, "DELETE", f"/kompute/{i}", None) for i in ids]
    _kill_and_restart(kahuna, world, kiwi, DELETE_STEPS, threads)
    _assert_nothing_left(kahuna, world, kiwi, corp, DELETE_STEPS)


# last: the fixtures above use clients of the first Kahuna
def test_sigkill_during_a_volume_create_is_recovered_at_restart(kahuna, world):
    k = world["kaktus"]
    k.faults.delay("CreateOsVolume", 1.0, times=1)
    answers = []
    request = threading.Thread(target=lambda: answers.append(_try_create(kahuna, world)))
    request.start()
    wait_for(lambda: stored_count(kahuna, "flow") == 1 and storage_usage(kahuna, world) == 4 * GiB,
             "the flow to reserve the quota")
    time.sleep(0.3)  # the CreateOsVolume call is in flight
    kahuna.proc.send_signal(signal.SIGKILL)
    kahuna.proc.wait(10)
    request.join(30)
    assert stored_count(kahuna, "volume") == 1 and stored_count(kahuna, "flow") == 1  # what the dead process left
    # the sim drops a call whose connection went; as if the agent had made the image meanwhile:
    if k.image("ssd", "orphan") is None:
        world["host"].run_sync(lambda: k.model.create_raw_volume("ssd", "orphan", 4 * GiB))
    kahuna.start()
    k.start(f"ws://127.0.0.1:{kahuna.hub_port}/ws")
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "the restarted Kahuna to recover the flow", timeout=20)
    assert k.image("ssd", "orphan") is None
    assert stored_count(kahuna, "volume") == 0 and storage_usage(kahuna, world) == 0
    assert http(kahuna, "GET", "/volume")[1] == []


def _try_create(kahuna, world):
    try:
        return http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                    {"name": "orphan", "type": "os", "size": 4 * GiB})
    except Exception as exc:  # the server died under the request
        return exc
