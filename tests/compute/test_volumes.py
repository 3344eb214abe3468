"""Project volumes over real HTTP with the official client and an in-process simulated Kaktus:
raw and os images made on the pool's agent, quota reserved (507 naming the dimension, exact
usage after parallel creates and deletes), resize never shrinks, a rename keeps the image,
agent failures undone with nothing left behind, access limited to the project's members."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, NotFoundException

from agent.sim.model import GiB
from tests.conftest import make_client
from tests.infra.helpers import http, stored


def _member(kahuna, world):
    return make_client(kahuna, api_key=None, token=world["member"])


def _usage(admin, world):
    return kowabunga.ProjectApi(admin).read_project_usage(world["project"]).storage


def test_raw_and_os_volumes_life_cycle(kahuna, world, admin):
    k = world["kaktus"]
    with _member(kahuna, world) as member:
        projects, volumes = kowabunga.ProjectApi(member), kowabunga.VolumeApi(member)
        raw = projects.create_project_region_volume(world["project"], world["region"], kowabunga.Volume(
            name="data1", description="scratch", type="raw", size=2 * GiB))
        assert (raw.name, raw.type, raw.size, raw.description) == ("data1", "raw", 2 * GiB, "scratch")
        assert k.image("ssd", "data1")["size"] == 2 * GiB and k.image("ssd", "data1")["kind"] == "raw"
        os_vol = projects.create_project_region_volume(world["project"], world["region"], kowabunga.Volume(
            name="root1", type="os", size=10 * GiB))  # the pool's default template
        assert k.image("ssd", "root1")["kind"] == "os" and k.image("ssd", "root1")["parent"]
        doc = stored(kahuna, "volume", os_vol.id)
        assert doc["project_id"] == world["project"] and doc["region_id"] == world["region"]
        assert doc["storage_pool_id"] == world["pool"] and doc["template_id"] == world["template"]
        assert doc["image"] == "root1" and doc["instance_id"] == ""
        assert _usage(admin, world) == 12 * GiB
        here = projects.list_project_region_volumes(world["project"], world["region"])
        assert set(here) == {raw.id, os_vol.id} and set(volumes.list_volumes()) == {raw.id, os_vol.id}
        assert set(http(kahuna, "GET", f"/pool/{world['pool']}/volumes")[1]) == {raw.id, os_vol.id}
        # rename keeps the RBD image; grow resizes it; shrink is refused
        grown = volumes.update_volume(raw.id, kowabunga.VolumeUpdate(name="data2", size=3 * GiB))
        assert (grown.name, grown.size) == ("data2", 3 * GiB)
        assert stored(kahuna, "volume", raw.id)["image"] == "data1"
        assert k.image("ssd", "data1")["size"] == 3 * GiB and k.image("ssd", "data2") is None
        assert _usage(admin, world) == 13 * GiB
        with pytest.raises(ApiException) as err:
            volumes.update_volume(raw.id, kowabunga.VolumeUpdate(size=1 * GiB))
        assert err.value.status == 422 and "never shrinks" in json.loads(err.value.body)["reason"]
        # a project with volumes is not deleted
        status, body = http(kahuna, "DELETE", f"/project/{world['project']}")
        assert status == 409 and "2 volumes" in body["reason"]
        for v in (raw, os_vol):
            assert volumes.delete_volume(v.id) is None
        assert k.image("ssd", "data1") is None and k.image("ssd", "root1") is None
        assert _usage(admin, world) == 0
        assert projects.list_project_region_volumes(world["project"], world["region"]) == []


def test_refused_types_bad_pool_and_an_attached_volume(kahuna, world):
    with _member(kahuna, world) as member:
        projects = kowabunga.ProjectApi(member)
        for kind in ("iso", "template"):
            with pytest.raises(ApiException) as err:
                projects.create_project_region_volume(world["project"], world["region"], kowabunga.Volume(
                    name="x", type=kind, size=GiB))
            assert err.value.status == 422
        with pytest.raises(ApiException) as err:
            projects.create_project_region_volume(world["project"], world["region"], kowabunga.Volume(
                name="x", type="raw", size=GiB), pool_id="0" * 24)
        assert err.value.status == 400
    status, body = http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                        {"name": "held", "type": "raw", "size": GiB})
    assert status == 201
    # attached (as an instance create would do): no delete
    import sqlite3
    conn = sqlite3.connect(str(kahuna.workdir / "data" / "kahuna.sqlite3"))
    doc = stored(kahuna, "volume", body["id"])
    doc["instance_id"] = "i" * 24
    conn.execute('UPDATE "volume" SET doc = ? WHERE _id = ?', (json.dumps(doc), body["id"]))
    conn.commit()
    status, err = http(kahuna, "DELETE", f"/volume/{body['id']}")
    assert status == 409 and "still used by instance" in err["reason"]
    doc["instance_id"] = ""
    conn.execute('UPDATE "volume" SET doc = ? WHERE _id = ?', (json.dumps(doc), body["id"]))
    conn.commit()
    conn.close()
    assert http(kahuna, "DELETE", f"/volume/{body['id']}")[0] == 200


def test_agent_failure_leaves_nothing(kahuna, world, admin):
    k = world["kaktus"]
    k.faults.fail("CreateRawVolume", "rbd: ret=-5, Input/output error", times=1)
    status, body = http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                        {"name": "broken", "type": "raw", "size": GiB})
    assert status == 502 and "Input/output error" in body["reason"]
    assert k.image("ssd", "broken") is None and _usage(admin, world) == 0
    assert kowabunga.ProjectApi(admin).list_project_region_volumes(world["project"], world["region"]) == []
    assert http(kahuna, "GET", "/volume")[1] == []


def test_quota_507_and_parallel_creates_never_exceed_it(kahuna, world, admin):
    with _member(kahuna, world) as member:
        projects = kowabunga.ProjectApi(member)
        with pytest.raises(ApiException) as err:
            projects.create_project_region_volume(world["project"], world["region"], kowabunga.Volume(
                name="huge", type="raw", size=41 * GiB))
        assert err.value.status == 507
        reason = json.loads(err.value.body)["reason"]
        assert "storage" in reason and str(40 * GiB) in reason

    def create(i):
        return http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                    {"name": f"p{i}", "type": "raw", "size": 5 * GiB})

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(create, range(12)))
    made = [b["id"] for s, b in results if s == 201]
    assert len(made) == 8 and all(s == 507 for s, _ in results if s != 201)
    assert _usage(admin, world) == 40 * GiB
    with ThreadPoolExecutor(8) as pool:
        assert all(s == 200 for s, _ in pool.map(lambda i: http(kahuna, "DELETE", f"/volume/{i}"), made))
    assert _usage(admin, world) == 0 and world["kaktus"].images("ssd").keys() <= {"noble"}


def test_others_do_not_see_the_project_volumes(kahuna, world):
    status, body = http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/volume",
                        {"name": "mine", "type": "raw", "size": GiB})
    assert status == 201
    with make_client(kahuna, api_key=None, token=world["outsider"]) as outsider:
        volumes, projects = kowabunga.VolumeApi(outsider), kowabunga.ProjectApi(outsider)
        assert volumes.list_volumes() == []
        with pytest.raises(NotFoundException):
            volumes.read_volume(body["id"])
        with pytest.raises(NotFoundException):
            volumes.delete_volume(body["id"])
        with pytest.raises(NotFoundException):
            projects.create_project_region_volume(world["project"], world["region"], kowabunga.Volume(
                name="intruder", type="raw", size=GiB))
    assert http(kahuna, "DELETE", f"/volume/{body['id']}")[0] == 200
