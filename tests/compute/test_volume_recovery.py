"""A volume grown (`PUT /volume/{id}` with a larger size) loses nothing, whatever happens to the
request: the project's storage usage, the stored size and the RBD image on the simulated Kaktus
always agree once Kahuna has settled the resize's flow.

- the normal path: 200 with the new size, image grown, usage + delta, nothing left pending;
- the agent refuses (`ResizeVolume` answers an error): 502 with the agent's reason, usage and
  document as they were;
- the call times out (504) and the agent grows the image later: the resize is finished, and
  until then another resize or a delete of the volume is a 409;
- the agent's connection is cut mid-call (503, nothing done): usage given back;
- the client goes away while `ResizeVolume` is on its way: the agent grows the image anyway
  (a cancelled call is abandoned, not recalled), so Kahuna finishes the resize;
- SIGKILL of Kahuna while the sim has not grown the image yet (`delay`: the call dies with the
  connection): the restart undoes it, usage back, size unchanged;
- SIGKILL while the sim has grown the image but holds its reply (`delay_reply`): the restart
  finishes it (an image cannot be shrunk back), usage and size follow the image."""

from __future__ import annotations

import socket
import time

from agent.sim.model import GiB
from tests.compute.crash import in_thread, kill_and_restart, storage_usage, stored_count
from tests.infra.helpers import CALL_TIMEOUT, MASTER_KEY, http, stored, unique, wait_for


def _volume(kahuna, world, size: int) -> tuple[str, str]:
    name = unique("rz")
    status, body = http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                        {"name": name, "type": "raw", "size": size})
    assert status == 201, body
    return body["id"], name


def _grow(kahuna, volume_id: str, size: int):
    return http(kahuna, "PUT", f"/volume/{volume_id}", {"size": size})


def _assert_settled(kahuna, world, volume_id: str, image: str, size: int, usage: int) -> None:
    """Image, stored size, API size and usage agree; no flow and no reservation left."""
    assert world["kaktus"].image("ssd", image)["size"] == size
    assert stored(kahuna, "volume", volume_id)["size"] == size
    status, body = http(kahuna, "GET", f"/volume/{volume_id}")
    assert status == 200 and body["size"] == size, body
    assert storage_usage(kahuna, world) == usage
    assert stored_count(kahuna, "flow") == 0
    assert not (stored(kahuna, "project", world["project"]).get("reservations") or {})


def _delete(kahuna, volume_id: str) -> None:
    status, body = http(kahuna, "DELETE", f"/volume/{volume_id}")
    assert status == 200, body


def test_a_grow_resizes_the_image_and_counts_the_delta(kahuna, world):
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    status, body = _grow(kahuna, vid, 3 * GiB)
    assert status == 200 and body["size"] == 3 * GiB, body
    _assert_settled(kahuna, world, vid, image, 3 * GiB, base + 3 * GiB)
    status, body = _grow(kahuna, vid, GiB)
    assert status == 422 and "never shrinks" in body["reason"]
    _assert_settled(kahuna, world, vid, image, 3 * GiB, base + 3 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base


def test_an_agent_error_leaves_usage_and_size_unchanged(kahuna, world):
    k = world["kaktus"]
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    k.faults.fail("ResizeVolume", "rbd: ret=-28, No space left on device", times=1)
    status, body = _grow(kahuna, vid, 5 * GiB)
    assert status == 502 and "No space left on device" in body["reason"], body
    _assert_settled(kahuna, world, vid, image, 2 * GiB, base + 2 * GiB)
    # and the next grow goes through, counted once
    status, body = _grow(kahuna, vid, 4 * GiB)
    assert status == 200 and body["size"] == 4 * GiB, body
    _assert_settled(kahuna, world, vid, image, 4 * GiB, base + 4 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base


def test_a_client_gone_during_the_resize_leaves_usage_size_and_image_agreeing(kahuna, world):
    k = world["kaktus"]
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    k.faults.delay("ResizeVolume", 1.0, times=1)  # then the sim grows it: nobody recalls the call
    host, port = kahuna.url.split("//", 1)[1].rsplit(":", 1)
    body = b'{"size": %d}' % (3 * GiB)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"PUT /api/v1/volume/%s HTTP/1.1\r\nHost: kahuna\r\nX-API-Key: %s\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (vid.encode(), MASTER_KEY.encode(), len(body), body))
        wait_for(lambda: storage_usage(kahuna, world) == base + 3 * GiB, "the grow to reserve its quota")
        time.sleep(0.3)  # ResizeVolume is on its way
    wait_for(lambda: k.image("ssd", image)["size"] == 3 * GiB, "the sim to grow the image")
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "Kahuna to settle the resize", timeout=30)
    _assert_settled(kahuna, world, vid, image, 3 * GiB, base + 3 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base


def test_a_timed_out_resize_is_settled_by_what_the_agent_did(kahuna, world):
    k = world["kaktus"]
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    k.faults.delay("ResizeVolume", CALL_TIMEOUT + 1.5, times=1)  # grown after Kahuna gave up
    status, body = _grow(kahuna, vid, 3 * GiB)
    assert status == 504 and "ResizeVolume timed out" in body["reason"], body
    # unsettled until the agent's image tells: no other resize, no delete meanwhile
    status, body = _grow(kahuna, vid, 4 * GiB)
    assert status == 409 and "resize is still being settled" in body["reason"], body
    status, body = http(kahuna, "DELETE", f"/volume/{vid}")
    assert status == 409 and "resize is still being settled" in body["reason"], body
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "Kahuna to settle the resize", timeout=30)
    _assert_settled(kahuna, world, vid, image, 3 * GiB, base + 3 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base


def test_a_resize_lost_with_the_agent_connection_is_given_back(kahuna, world):
    k = world["kaktus"]
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    k.faults.drop("ResizeVolume", times=1)  # the connection cut mid-call: nothing done
    status, body = _grow(kahuna, vid, 3 * GiB)
    assert status == 503 and "no eligible agent" in body["reason"], body
    k.wait_connected()
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "Kahuna to settle the resize", timeout=30)
    _assert_settled(kahuna, world, vid, image, 2 * GiB, base + 2 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base


# last: they restart Kahuna (clients of the first one would point at its old port)
def test_sigkill_before_the_agent_grew_the_image_is_undone_at_restart(kahuna, world):
    k = world["kaktus"]
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    k.faults.delay("ResizeVolume", 30.0, times=1)  # the call dies with the connection: not done
    thread = in_thread(_grow, kahuna, vid, 3 * GiB)
    wait_for(lambda: storage_usage(kahuna, world) == base + 3 * GiB, "the grow to reserve its quota")
    time.sleep(0.3)  # ResizeVolume is in flight
    kill_and_restart(kahuna, [k], [thread])
    k.wait_connected()
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "the restarted Kahuna to settle the resize", timeout=30)
    _assert_settled(kahuna, world, vid, image, 2 * GiB, base + 2 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base


def test_sigkill_while_the_agent_holds_its_resize_reply_is_finished_at_restart(kahuna, world):
    k = world["kaktus"]
    base = storage_usage(kahuna, world)
    vid, image = _volume(kahuna, world, 2 * GiB)
    k.faults.delay_reply("ResizeVolume", 30.0, times=1)  # grown at once, the reply held back
    thread = in_thread(_grow, kahuna, vid, 5 * GiB)
    wait_for(lambda: k.image("ssd", image)["size"] == 5 * GiB, "the sim to grow the image")
    kill_and_restart(kahuna, [k], [thread])
    k.wait_connected()
    wait_for(lambda: stored_count(kahuna, "flow") == 0, "the restarted Kahuna to settle the resize", timeout=30)
    _assert_settled(kahuna, world, vid, image, 5 * GiB, base + 5 * GiB)
    _delete(kahuna, vid)
    assert storage_usage(kahuna, world) == base
