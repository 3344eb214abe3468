"""Storage pools, templates and NFS storages through the official client, with simulated Kaktus
agents: template images created and deleted on an agent, sizes recorded, pool statistics, the
default children, and every failure path (no agent, agent error, agent timeout)."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, BadRequestException, ConflictException, NotFoundException

from tests.infra.helpers import CALL_TIMEOUT, create_agents, http, region_and_zone, stored, unique, wait_for

GiB = 2**30
SOURCE = "https://images.acme.test/noble.qcow2"


@pytest.fixture(scope="module")
def env(admin, kahuna, sims):
    """A region with three Kaktus agents: a good one, one whose pools are tiny (its Ceph refuses
    every image: an agent error) and one that answers CreateTemplateVolume too late."""
    good, tiny, slow, idle = create_agents(kahuna, "Kaktus", 4)
    region_id, _ = region_and_zone(admin)
    started = [sims.start(kahuna, good, sim={"pools": {"rbd": 64 * GiB}, "templateSizes": {SOURCE: 3 * GiB}}),
               sims.start(kahuna, tiny, sim={"pools": {"tiny": 1}, "autoCreatePools": False}),
               sims.start(kahuna, slow, sim={"pools": {"slow": 64 * GiB}},
                          delay={"CreateTemplateVolume": CALL_TIMEOUT + 2})]
    # `idle` is never started: a pool listing only it has no eligible agent
    for sim in started:
        sim.wait_connected()
    return {"region": region_id, "good": good, "tiny": tiny, "slow": slow, "idle": idle,
            "sims": {s.id: s for s in started}}


def make_pool(admin, env, agent: str, ceph_pool: str, **extra) -> kowabunga.StoragePool:
    return kowabunga.RegionApi(admin).create_region_storage_pool(env["region"], kowabunga.StoragePool(
        name=unique("pool"), pool=ceph_pool, agents=[env[agent]["id"]], **extra))


def test_pool_crud_defaults_statistics_and_default_pool(admin, kahuna, env):
    regions, pools = kowabunga.RegionApi(admin), kowabunga.PoolApi(admin)
    first = make_pool(admin, env, "good", "rbd")
    # upstream's defaults
    assert (first.ceph_address, first.ceph_port, first.ceph_secret_uuid) == ("localhost", 3300, "")
    assert first.cost == kowabunga.Cost(price=0.0, currency="")
    doc = stored(kahuna, "storage_pool", first.id)
    assert doc["libvirt_pool"] == "rbd" and doc["ceph_mon_port"] == 3300 and doc["agent_ids"] == [env["good"]["id"]]
    # statistics from the connected agent, at creation
    assert doc["capacity"] == 64 * GiB and doc["available"] == 64 * GiB and doc["allocation"] == 0
    assert first.id in regions.list_region_storage_pools(env["region"]) and first.id in pools.list_storage_pools()
    assert pools.list_storage_pool_volumes(first.id) == []

    updated = pools.update_storage_pool(first.id, kowabunga.StoragePoolUpdate(
        ceph_address="mon.acme.test", ceph_port=6789, ceph_secret_uuid="5F1B3E2A-0C4D-4E6F-8A9B-0C1D2E3F4A5B",
        cost=kowabunga.Cost(price=12.5, currency="EUR")))
    assert updated.ceph_port == 6789 and updated.ceph_address == "mon.acme.test"
    assert updated.ceph_secret_uuid == "5f1b3e2a-0c4d-4e6f-8a9b-0c1d2e3f4a5b" and updated.pool == "rbd"
    status, body = http(kahuna, "PUT", f"/pool/{first.id}", {"ceph_secret_uuid": "nope"})
    assert status == 400 and "UUID" in body["reason"]
    status, body = http(kahuna, "PUT", f"/pool/{first.id}", {"ceph_port": 70000})
    assert status == 400
    status, body = http(kahuna, "PUT", f"/pool/{first.id}", {"agents": [env["idle"]["id"], "f" * 24]})
    assert status == 400 and "not found" in body["reason"]

    # the first pool of the region is its default; the PATCH moves it; deleting it moves it on
    second = make_pool(admin, env, "good", "rbd2")
    assert stored(kahuna, "region", env["region"])["defaults"]["pool_id"] == first.id
    assert regions.set_region_default_storage_pool(env["region"], second.id) is None
    assert stored(kahuna, "region", env["region"])["defaults"]["pool_id"] == second.id
    with pytest.raises(NotFoundException):
        regions.set_region_default_storage_pool(env["region"], "0" * 24)
    other_region, _ = region_and_zone(admin)
    with pytest.raises(NotFoundException):  # a pool of another region
        regions.set_region_default_storage_pool(other_region, second.id)
    pools.delete_storage_pool(second.id)
    assert stored(kahuna, "region", env["region"])["defaults"]["pool_id"] == first.id


def test_template_image_created_on_an_agent_with_its_size(admin, kahuna, env):
    pools, templates = kowabunga.PoolApi(admin), kowabunga.TemplateApi(admin)
    pool = make_pool(admin, env, "good", "images")
    good = env["sims"][env["good"]["id"]]
    tpl = pools.create_storage_pool_template(pool.id, kowabunga.Template(name="ubuntu-noble", source=SOURCE))
    assert (tpl.os, tpl.source, tpl.name) == ("linux", SOURCE, "ubuntu-noble")
    image = good.state()["pools"]["images"]["volumes"]["ubuntu-noble"]
    assert image == {"size": 3 * GiB, "kind": "template", "source": SOURCE}
    doc = stored(kahuna, "template", tpl.id)
    assert doc["size"] == 3 * GiB and doc["storage_pool_id"] == pool.id and doc["source_url"] == SOURCE
    assert tpl.id in pools.list_storage_pool_templates(pool.id) and tpl.id in templates.list_templates()
    # the first template is the pool's default
    assert stored(kahuna, "storage_pool", pool.id)["defaults"]["template_ids"]["os"] == tpl.id

    # source and os are set at creation only: ignored on updates; the name changes, the image stays
    status, body = http(kahuna, "PUT", f"/template/{tpl.id}", {"name": "noble", "source": "https://x.test/y", "os": "windows"})
    assert status == 200 and (body["name"], body["source"], body["os"]) == ("noble", SOURCE, "linux")

    win = pools.create_storage_pool_template(pool.id, kowabunga.Template(
        name="win", os="windows", source="http://images.acme.test/win.qcow2"))
    assert win.os == "windows"
    assert pools.set_storage_pool_default_template(pool.id, win.id) is None
    assert stored(kahuna, "storage_pool", pool.id)["defaults"]["template_ids"]["os"] == win.id

    # a pool with templates cannot be deleted
    with pytest.raises(ConflictException) as err:
        pools.delete_storage_pool(pool.id)
    assert "2 templates" in err.value.body
    # deleting a template deletes its image first; the default moves to the remaining one
    templates.delete_template(win.id)
    assert "win" not in good.state()["pools"]["images"]["volumes"]
    assert stored(kahuna, "storage_pool", pool.id)["defaults"]["template_ids"]["os"] == tpl.id
    templates.delete_template(tpl.id)
    assert good.state()["pools"]["images"]["volumes"] == {}
    assert stored(kahuna, "storage_pool", pool.id)["defaults"]["template_ids"]["os"] == ""
    pools.delete_storage_pool(pool.id)


def test_template_validation_happens_before_any_agent_call(admin, kahuna, env):
    pool = make_pool(admin, env, "good", "images2")
    calls = len(env["sims"][env["good"]["id"]].state()["calls"])
    for body, status_expected in (({"name": unique("t"), "source": "ftp://x.test/y"}, 400),
                                  ({"name": unique("t"), "source": SOURCE, "os": "beos"}, 400),
                                  ({"name": unique("t")}, 422),
                                  ({"name": unique("t"), "source": SOURCE, "size": 1}, 400)):
        status, answer = http(kahuna, "POST", f"/pool/{pool.id}/template", body)
        assert status == status_expected, answer
    assert len(env["sims"][env["good"]["id"]].state()["calls"]) == calls
    assert kowabunga.PoolApi(admin).list_storage_pool_templates(pool.id) == []


def test_no_eligible_agent_agent_error_and_timeout_leave_nothing(admin, kahuna, env):
    pools = kowabunga.PoolApi(admin)

    def refused(pool, name):
        with pytest.raises(ApiException) as err:
            pools.create_storage_pool_template(pool.id, kowabunga.Template(name=name, source=SOURCE))
        assert pools.list_storage_pool_templates(pool.id) == []  # nothing half-created
        return err.value.status, err.value.body

    # no agent of the pool is connected: 503
    status, body = refused(make_pool(admin, env, "idle", "rbd"), "t1")
    assert status == 503 and "no eligible agent" in body

    # the agent answers an error: 502 with its words
    tiny = make_pool(admin, env, "tiny", "tiny")
    status, body = refused(tiny, "t2")
    assert status == 502 and "No space left on device" in body and env["tiny"]["id"] in body

    # the agent does not answer in time: 504; the image it finishes later is deleted again
    slow_pool = make_pool(admin, env, "slow", "slow")
    slow = env["sims"][env["slow"]["id"]]
    status, body = refused(slow_pool, "t3")
    assert status == 504 and f"timed out after {CALL_TIMEOUT:g} s" in body

    def late_image_deleted() -> bool:
        state = slow.state()
        done = state["done"]
        return ("CreateTemplateVolume:ok" in done and "DeleteVolume:ok" in done
                and done.index("CreateTemplateVolume:ok") < done.index("DeleteVolume:ok")
                and state["pools"]["slow"]["volumes"] == {})
    wait_for(late_image_deleted, "the late image to be deleted", timeout=20)
    # the name is free again
    good_pool = make_pool(admin, env, "good", "rbd")
    assert pools.create_storage_pool_template(good_pool.id, kowabunga.Template(name="t3", source=SOURCE)).name == "t3"


def test_delete_template_failures_keep_it(admin, kahuna, env, sims):
    pools, templates = kowabunga.PoolApi(admin), kowabunga.TemplateApi(admin)
    agent = create_agents(kahuna, "Kaktus", 1)[0]
    sim = sims.start(kahuna, agent, sim={"pools": {"del": 64 * GiB}}).wait_connected()
    pool = kowabunga.RegionApi(admin).create_region_storage_pool(env["region"], kowabunga.StoragePool(
        name=unique("pool"), pool="del", agents=[agent["id"]]))
    tpl = pools.create_storage_pool_template(pool.id, kowabunga.Template(name="keep", source=SOURCE))
    sim.stop()
    sim.wait_disconnected()
    with pytest.raises(ApiException) as err:
        templates.delete_template(tpl.id)
    assert err.value.status == 503
    assert templates.read_template(tpl.id).name == "keep"


def test_nfs_on_a_pool(admin, kahuna, env):
    regions, nfs_api = kowabunga.RegionApi(admin), kowabunga.NfsApi(admin)
    region_id, _ = region_and_zone(admin)
    nfs = kowabunga.StorageNFS(name=unique("nfs"), endpoint="nfs.acme.test", backends=["10.0.0.1", "10.0.0.2"])
    # no pool in the region yet: the default pool is missing
    with pytest.raises(BadRequestException) as err:
        regions.create_region_storage_nfs(region_id, nfs)
    assert "no storage pool" in err.value.body
    pool = kowabunga.RegionApi(admin).create_region_storage_pool(region_id, kowabunga.StoragePool(
        name=unique("pool"), pool="cephfs", agents=[env["good"]["id"]]))
    created = regions.create_region_storage_nfs(region_id, nfs)  # on the region's default pool
    assert (created.fs, created.port, created.backends) == ("nfs", 54934, ["10.0.0.1", "10.0.0.2"])
    doc = stored(kahuna, "nfs", created.id)
    assert doc["storage_pool_id"] == pool.id and doc["ganesha"] == {"backends": ["10.0.0.1", "10.0.0.2"], "port": 54934}
    assert stored(kahuna, "region", region_id)["defaults"]["nfs_id"] == created.id
    assert created.id in regions.list_region_storage_nf_ses(region_id) and created.id in nfs_api.list_storage_nf_ses()
    assert nfs_api.list_storage_nfs_kylos(created.id) == []

    second = regions.create_region_storage_nfs(region_id, kowabunga.StorageNFS(
        name=unique("nfs"), endpoint="nfs2.acme.test", backends=[], fs="cephfs", port=2049), pool_id=pool.id)
    assert second.fs == "cephfs" and second.port == 2049
    assert regions.set_region_default_storage_nfs(region_id, second.id) is None
    assert stored(kahuna, "region", region_id)["defaults"]["nfs_id"] == second.id
    # a pool of another region, an unknown pool, a bad endpoint or backend
    other = make_pool(admin, env, "good", "elsewhere")
    for query, body in ((f"?poolId={other.id}", {}), ("?poolId=" + "0" * 24, {}),
                        ("", {"endpoint": "not a host"}), ("", {"backends": ["nfs.acme.test"]})):
        status, answer = http(kahuna, "POST", f"/region/{region_id}/nfs{query}",
                              {"name": unique("nfs"), "endpoint": "nfs.acme.test", "backends": [], **body})
        assert status == 400, (query, body, answer)
    updated = nfs_api.update_storage_nfs(second.id, kowabunga.StorageNFSUpdate(backends=["10.1.1.1"], port=12049))
    assert updated.backends == ["10.1.1.1"] and updated.port == 12049 and updated.endpoint == "nfs2.acme.test"

    # the pool backs NFS storages: it cannot be deleted before them
    with pytest.raises(ConflictException) as err:
        kowabunga.PoolApi(admin).delete_storage_pool(pool.id)
    assert "2 NFS storages" in err.value.body
    nfs_api.delete_storage_nfs(second.id)
    assert stored(kahuna, "region", region_id)["defaults"]["nfs_id"] == created.id
    nfs_api.delete_storage_nfs(created.id)
    kowabunga.PoolApi(admin).delete_storage_pool(pool.id)


def test_pool_statistics_refresh_when_an_agent_connects(admin, kahuna, sims, env):
    agent = create_agents(kahuna, "Kaktus", 1)[0]
    pool = kowabunga.RegionApi(admin).create_region_storage_pool(env["region"], kowabunga.StoragePool(
        name=unique("pool"), pool="later", agents=[agent["id"]]))
    assert stored(kahuna, "storage_pool", pool.id)["capacity"] == 0
    sims.start(kahuna, agent, sim={"pools": {"later": 5 * GiB}}).wait_connected()
    wait_for(lambda: stored(kahuna, "storage_pool", pool.id)["capacity"] == 5 * GiB, "pool statistics")
