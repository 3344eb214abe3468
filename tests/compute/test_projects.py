"""Project networks over real HTTP with the official client (issue 8, the project part): the
private subnet per region at create (size fallback, a ceph subnet never taken, parallel creates
never sharing one, a failing region releasing everything), zone gateways, update adding and
removing regions, delete refused while something is left, cost from the current instances and
volumes; and the pure parts (subnet choice, gateways, VRRP ids, prices) plus VRRP allocation
under concurrency on an in-process store, without sockets."""

from __future__ import annotations

import concurrent.futures

import kowabunga
import pytest
import trio
from kowabunga.exceptions import ApiException

from agent.sim.model import GiB
from tests.infra.helpers import agent_status, create_agents, http, stored, unique, wait_for

# -- pure parts -----------------------------------------------------------------------------------

from kahuna.resources import cost, project_net  # noqa: E402

PRIVATE, PUBLIC = {"private": True}, {"private": False}


def _subnet(i: int, cidr: str, **extra) -> dict:
    return {"_id": f"s{i}", "cidr": cidr, **extra}


def test_subnet_choice_walks_sizes_and_skips_what_is_not_for_projects():
    pairs = [(PRIVATE, _subnet(1, "10.0.0.0/26", application="ceph")),
             (PUBLIC, _subnet(2, "198.51.100.0/26")),
             (PRIVATE, _subnet(3, "10.0.1.0/26", project_id="p")),
             (PRIVATE, _subnet(4, "10.0.2.0/24")),
             (PRIVATE, _subnet(5, "10.0.3.0/25")),
             (PRIVATE, _subnet(6, "10.0.4.0/26"))]
    assert project_net.choose_subnet(pairs, 26)["_id"] == "s6"
    assert project_net.choose_subnet(pairs[:5], 26)["_id"] == "s5"  # /25 before /24
    assert project_net.choose_subnet(pairs[:4], 26)["_id"] == "s4"
    assert project_net.choose_subnet(pairs[:3], 26) is None  # ceph, public and owned are never taken
    assert project_net.choose_subnet([(PRIVATE, _subnet(7, "10.0.0.0/16"))], 26) is None  # stops at /17
    assert project_net.prefix_sizes(26) == list(range(26, 16, -1)) and project_net.prefix_sizes(16) == [16]


def test_gateways_and_vrrp_ids_pure():
    subnet = _subnet(1, "10.0.0.0/24", gw_pool=[{"first": "10.0.0.250", "last": "10.0.0.251"},
                                                {"first": "10.0.0.10", "last": "10.0.0.10"}])
    ips = project_net.pool_addresses(subnet)
    assert ips == ["10.0.0.250", "10.0.0.251", "10.0.0.10"]
    zones = [{"_id": "z1", "name": "b"}, {"_id": "z2", "name": "a"}]
    assert project_net.assign_gateways(zones, ips) == {"z2": "10.0.0.250", "z1": "10.0.0.251"}
    assert project_net.assign_gateways(zones, ips[:1]) is None
    assert project_net.lowest_free_vrrp([1, 2, 4]) == 3
    assert project_net.lowest_free_vrrp(range(1, 256)) is None


def test_prices_pure():
    kaktus = {"capabilities": {"cpu": {"threads": 8}, "memory": 64 * GiB},
              "overcommit": {"cpu": 2, "memory": 2}, "costs": {"cpu": {"price": 160.0, "currency": "CHF"},
                                                               "memory": {"price": 64.0, "currency": "CHF"}}}
    unknown = {"capabilities": {}, "costs": {"cpu": {"price": 999.0, "currency": "CHF"}}}
    prices = cost.zone_prices_of([kaktus, unknown])  # a Kaktus with no capabilities yet has no price
    assert (prices.vcpu, prices.memory_gb, prices.currency) == (10.0, 0.5, "CHF")
    assert cost.instance_price({"vcpus": 3, "memory": 5 * GiB + 1}, prices) == 3 * 10.0 + 5 * 0.5
    storage = cost.storage_price_of([{"capacity": 100 * GiB, "cost": {"price": 50.0, "currency": "CHF"}},
                                     {"capacity": 10 * GiB, "cost": {"price": 10.0, "currency": "CHF"}},
                                     {"capacity": 0, "cost": {"price": 7.0}}])
    assert storage.gb == pytest.approx((0.5 + 1.0) / 2)
    assert cost.volume_price({"size": 3 * GiB - 1}, storage) == 2 * storage.gb


def test_vrrp_ids_parallel_allocations_never_collide(tmp_path):
    from kahuna.resources import catalog  # noqa: F401  (every kind registered)
    from kahuna.resources.errors import InsufficientResources
    from kahuna.resources.service import Resources
    from kahuna.store.embedded import EmbeddedStore

    async def main():
        store = EmbeddedStore(tmp_path / "s.sqlite3")
        await store.open()
        try:
            res = Resources(store)
            await store.insert("project", {"_id": "a" * 24, "name": "p", "reserved_vrrp_ids": [2]})
            got = []

            async def one():
                got.append(await project_net.allocate_vrrp_id(res, "a" * 24))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(one)
            assert sorted(got) == [1] + list(range(3, 22))
            await project_net.release_vrrp_id(res, "a" * 24, 5)
            await project_net.release_vrrp_id(res, "a" * 24, 5)  # idempotent
            assert await project_net.allocate_vrrp_id(res, "a" * 24) == 5
            await store.update_fields("project", "a" * 24, {"reserved_vrrp_ids": list(range(1, 256))})
            with pytest.raises(InsufficientResources):
                await project_net.allocate_vrrp_id(res, "a" * 24)
            await project_net.release_vrrp_id(res, "b" * 24, 1)  # a project already gone
        finally:
            await store.close()

    trio.run(main)


# -- over HTTP ------------------------------------------------------------------------------------

def _region(admin, zones: int = 2):
    regions = kowabunga.RegionApi(admin)
    region = regions.create_region(kowabunga.Region(name=unique("region"), domain="acme.test"))
    made = [regions.create_region_zone(region.id, kowabunga.Zone(name=f"{c}-{unique('z')}")).id
            for c in "zyx"[:zones]]
    return region.id, made[::-1]  # sorted by name: x-…, y-…, z-…


def _vnet(admin, region, *, private=True):
    return kowabunga.RegionApi(admin).create_region_v_net(region, kowabunga.VNet(
        name=unique("vnet"), interface="br0", private=private)).id


def _subnet_of(admin, vnet, cidr, gw_pool=(), application=None):
    net = cidr.rsplit(".", 1)[0]
    base = int(cidr.rsplit(".", 1)[1].split("/")[0])
    body = kowabunga.Subnet(name=unique("subnet"), cidr=cidr, gateway=f"{net}.{base + 1}",
                            gw_pool=[kowabunga.IpRange(first=f, last=l) for f, l in gw_pool])
    if application:
        body.application = application
    return kowabunga.VnetApi(admin).create_v_net_subnet(vnet, body).id


@pytest.fixture(scope="module")
def team(admin):
    return kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[])).id


def _project(admin, team, regions, size=None):
    return kowabunga.ProjectApi(admin).create_project(
        kowabunga.Project(name=unique("project"), teams=[team], regions=regions), subnet_size=size)


def room_in(admin, region, net: str) -> None:
    """One more free private subnet `<net>.0/24` in a region that has private networks (the
    compute world's region may, and its subnets belong to its two projects)."""
    for vnet_id in kowabunga.RegionApi(admin).list_region_v_nets(region):
        if kowabunga.VnetApi(admin).read_v_net(vnet_id).private:
            _subnet_of(admin, vnet_id, f"{net}.0/24", [(f"{net}.2", f"{net}.4")])
            return


def _owner(kahuna, subnet_id):
    return stored(kahuna, "subnet", subnet_id).get("project_id") or ""


def test_project_gets_a_subnet_and_zone_gateways(kahuna, admin, team):
    region, zones = _region(admin)
    vnet = _vnet(admin, region)
    _vnet(admin, region, private=False)
    ceph = _subnet_of(admin, vnet, "10.60.0.0/26", application="ceph")
    small = _subnet_of(admin, vnet, "10.60.0.64/27", [("10.60.0.90", "10.60.0.91")])
    user = _subnet_of(admin, vnet, "10.60.1.0/25", [("10.60.1.120", "10.60.1.121")])
    project = _project(admin, team, [region], size=26)
    # no free /26 but the ceph one: the /25 (a bigger subnet) is taken, never the ceph network
    assert [(p.key, p.value) for p in project.private_subnets] == [(region, user)]
    assert kowabunga.ProjectApi(admin).read_project(project.id).private_subnets[0].value == user
    doc = stored(kahuna, "project", project.id)
    assert doc["private_subnets"] == {region: user}
    assert doc["zone_gateways"] == {zones[0]: "10.60.1.120", zones[1]: "10.60.1.121"}
    assert (_owner(kahuna, user), _owner(kahuna, ceph), _owner(kahuna, small)) == (project.id, "", "")
    # the owned subnet cannot be deleted under the project
    status, body = http(kahuna, "DELETE", f"/subnet/{user}")
    assert status == 409 and project.id in body["reason"]
    # a /27 request takes the /27
    assert _project(admin, team, [region], size=27).private_subnets[0].value == small
    # and then nothing is left: 422 naming the region and the size
    with pytest.raises(ApiException) as err:
        _project(admin, team, [region], size=26)
    assert err.value.status == 422 and "/26" in err.value.body
    assert kowabunga.RegionApi(admin).read_region(region).name in err.value.body

    kowabunga.ProjectApi(admin).delete_project(project.id)
    assert _owner(kahuna, user) == ""


def test_region_without_private_network_gives_no_subnet(kahuna, admin, team):
    region, _ = _region(admin, zones=1)
    _vnet(admin, region, private=False)
    project = _project(admin, team, [region])
    assert project.private_subnets == []


def test_a_failing_region_releases_every_subnet_reserved(kahuna, admin, team):
    ok, _ = _region(admin, zones=1)
    full, _ = _region(admin, zones=1)
    free = _subnet_of(admin, _vnet(admin, ok), "10.61.0.0/26")
    _subnet_of(admin, _vnet(admin, full), "10.61.1.0/28")  # too small for a /26
    names = kowabunga.ProjectApi(admin).list_projects()
    with pytest.raises(ApiException) as err:
        _project(admin, team, [ok, full], size=26)
    assert err.value.status == 422
    assert "/26" in err.value.body and kowabunga.RegionApi(admin).read_region(full).name in err.value.body
    assert _owner(kahuna, free) == ""
    assert kowabunga.ProjectApi(admin).list_projects() == names  # no project left either
    # a pool too short for the zones is a 422 too, and releases as well
    short, _ = _region(admin, zones=1)
    vnet = _vnet(admin, short)
    sub = _subnet_of(admin, vnet, "10.61.2.0/26", [("10.61.2.60", "10.61.2.60")])
    kowabunga.RegionApi(admin).create_region_zone(short, kowabunga.Zone(name=unique("z")))  # now 2 zones
    with pytest.raises(ApiException) as err:
        _project(admin, team, [ok, short], size=26)
    assert err.value.status == 422 and "gw_pool" in err.value.body
    assert _owner(kahuna, free) == _owner(kahuna, sub) == ""


def test_a_subnet_left_marked_by_a_dead_project_is_free_again(kahuna, admin, team):
    """A crash between a project's delete and its subnet's release leaves the subnet marked by a
    project that no longer exists: the next reservation takes it."""
    import json
    import sqlite3
    region, _ = _region(admin, zones=1)
    sub = _subnet_of(admin, _vnet(admin, region), "10.68.0.0/26")
    conn = sqlite3.connect(str(kahuna.workdir / "data" / "kahuna.sqlite3"), timeout=10)
    try:
        (raw,) = conn.execute('SELECT doc FROM "subnet" WHERE _id = ?', (sub,)).fetchone()
        marked = {**json.loads(raw), "project_id": "d" * 24}
        conn.execute('UPDATE "subnet" SET doc = ? WHERE _id = ?', (json.dumps(marked), sub))
        conn.commit()
    finally:
        conn.close()
    project = _project(admin, team, [region], size=26)
    assert project.private_subnets[0].value == sub and _owner(kahuna, sub) == project.id


def test_parallel_creates_never_share_a_subnet(kahuna, admin, team):
    region, _ = _region(admin, zones=1)
    vnet = _vnet(admin, region)
    subnets = {_subnet_of(admin, vnet, f"10.62.{i}.0/26") for i in range(4)}

    def create(_):
        try:
            return _project(admin, team, [region], size=26).private_subnets[0].value
        except ApiException as exc:
            return exc.status

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(create, range(6)))
    won = [g for g in got if g not in (422,)]
    assert sorted(won) == sorted(subnets) and got.count(422) == 2
    assert {_owner(kahuna, s) for s in subnets} != {""} and len({_owner(kahuna, s) for s in subnets}) == 4


def test_update_adds_and_removes_regions(kahuna, admin, team, world):
    first, _ = _region(admin, zones=1)
    second, second_zones = _region(admin, zones=1)
    s1 = _subnet_of(admin, _vnet(admin, first), "10.63.0.0/26")
    s2 = _subnet_of(admin, _vnet(admin, second), "10.63.1.0/26", [("10.63.1.50", "10.63.1.50")])
    projects = kowabunga.ProjectApi(admin)
    project = _project(admin, team, [first], size=26)
    # description only: regions and subnets unchanged
    same = projects.update_project(project.id, kowabunga.ProjectUpdate(description="x"))
    assert [(p.key, p.value) for p in same.private_subnets] == [(first, s1)]
    added = projects.update_project(project.id, kowabunga.ProjectUpdate(regions=[first, second]))
    assert sorted((p.key, p.value) for p in added.private_subnets) == sorted([(first, s1), (second, s2)])
    assert stored(kahuna, "project", project.id)["zone_gateways"] == {second_zones[0]: "10.63.1.50"}
    assert _owner(kahuna, s2) == project.id
    removed = projects.update_project(project.id, kowabunga.ProjectUpdate(regions=[second]))
    assert [(p.key, p.value) for p in removed.private_subnets] == [(second, s2)]
    assert _owner(kahuna, s1) == ""

    # a region where the project still has a volume is not removed (409), nothing changes
    room_in(admin, world["region"], "10.66.0")
    projects.update_project(project.id, kowabunga.ProjectUpdate(regions=[second, world["region"]]))
    volume = projects.create_project_region_volume(project.id, world["region"], kowabunga.Volume(
        name=unique("v"), type="raw", size=GiB), pool_id=world["pool"])
    with pytest.raises(ApiException) as err:
        projects.update_project(project.id, kowabunga.ProjectUpdate(regions=[second]))
    assert err.value.status == 409 and "1 volume" in err.value.body
    assert sorted(projects.read_project(project.id).regions) == sorted([second, world["region"]])
    assert _owner(kahuna, s2) == project.id

    # and the project is not deleted while it has something: the reason names what is left
    with pytest.raises(ApiException) as err:
        projects.delete_project(project.id)
    assert err.value.status == 409 and "1 volume" in err.value.body
    assert _owner(kahuna, s2) == project.id
    kowabunga.VolumeApi(admin).delete_volume(volume.id)
    projects.delete_project(project.id)
    assert _owner(kahuna, s2) == ""


def test_delete_refused_while_dns_records_are_left(kahuna, admin, team, host):
    region, _ = _region(admin, zones=1)
    sub = _subnet_of(admin, _vnet(admin, region), "10.64.0.0/26")
    agent = create_agents(kahuna, "Kiwi")[0]
    kiwi = host.kiwi(agent["id"], agent["key"], f"ws://127.0.0.1:{kahuna.hub_port}/ws")
    kiwi.wait_connected()
    wait_for(lambda: agent_status(kahuna, agent["id"])["connected"], "Kahuna to see the Kiwi")
    kowabunga.RegionApi(admin).create_region_kiwi(region, kowabunga.Kiwi(name=unique("kiwi"), agents=[agent["id"]]))
    projects = kowabunga.ProjectApi(admin)
    project = projects.create_project(kowabunga.Project(
        name=unique("project"), domain="p.acme.test", teams=[team], regions=[region]))
    record = projects.create_project_dns_record(project.id, kowabunga.DnsRecord(name="www", addresses=["10.64.0.5"]))
    with pytest.raises(ApiException) as err:
        projects.delete_project(project.id)
    assert err.value.status == 409 and "1 DNS record" in err.value.body
    assert _owner(kahuna, sub) == project.id and projects.read_project(project.id).private_subnets[0].value == sub
    kowabunga.RecordApi(admin).delete_dns_record(record.id)
    projects.delete_project(project.id)
    assert _owner(kahuna, sub) == ""
    kiwi.stop()


def test_cost_from_current_instances_and_volumes(kahuna, admin, team, world):
    projects = kowabunga.ProjectApi(admin)
    kowabunga.KaktusApi(admin).update_kaktus(world["kaktus_id"], kowabunga.KaktusUpdate(
        cpu_cost=kowabunga.Cost(price=120.0, currency="CHF"), memory_cost=kowabunga.Cost(price=64.0, currency="CHF")))
    kowabunga.PoolApi(admin).update_storage_pool(world["pool"], kowabunga.StoragePoolUpdate(
        cost=kowabunga.Cost(price=50.0, currency="CHF")))
    room_in(admin, world["region"], "10.67.0")
    project = _project(admin, team, [world["region"]])
    assert projects.read_project_cost(project.id).price == 0
    volumes = [projects.create_project_region_volume(project.id, world["region"], kowabunga.Volume(
        name=unique("v"), type="raw", size=size), pool_id=world["pool"]) for size in (3 * GiB, 2 * GiB + 5)]
    caps = kowabunga.KaktusApi(admin).read_kaktus_caps(world["kaktus_id"])
    kaktus = stored(kahuna, "kaktus", world["kaktus_id"])
    capacity_gb = stored(kahuna, "storage_pool", world["pool"])["capacity"] // GiB
    gb = 50.0 / capacity_gb
    got = projects.read_project_cost(project.id)
    assert got.currency == "CHF" and got.price == pytest.approx((3 + 2) * gb)
    kowabunga.VolumeApi(admin).delete_volume(volumes[0].id)
    assert projects.read_project_cost(project.id).price == pytest.approx(2 * gb)
    # an instance: vcpus × zone vCPU price + floor(memory GiB) × zone memory price
    vcpu = 120.0 / (caps.cpu.threads * kaktus["overcommit"]["cpu"])
    mem = 64.0 / (caps.memory // GiB * kaktus["overcommit"]["memory"])
    kompute = projects.create_project_zone_kompute(project.id, world["zone"], kowabunga.Kompute(
        name=unique("k"), vcpus=2, memory=3 * GiB, disk=4 * GiB), pool_id=world["pool"], template_id=world["template"])
    expected = 2 * vcpu + 3 * mem + (2 + 4) * gb
    assert projects.read_project_cost(project.id).price == pytest.approx(expected)
    kowabunga.KomputeApi(admin).delete_kompute(kompute.id)
    kowabunga.VolumeApi(admin).delete_volume(volumes[1].id)
    assert projects.read_project_cost(project.id).price == 0


def _in_a_store(tmp_path, body) -> None:
    """Run `body(res, store)` over a fresh embedded store with every kind registered."""
    from kahuna.resources import catalog  # noqa: F401  (every kind registered)
    from kahuna.resources.service import Resources
    from kahuna.store.embedded import EmbeddedStore

    async def main():
        store = EmbeddedStore(tmp_path / "s.sqlite3")
        await store.open()
        try:
            await body(Resources(store), store)
        finally:
            await store.close()

    trio.run(main)


def test_public_subnet_private_subnet_and_zone_gateway_lookups(tmp_path):
    from kahuna.resources.errors import DomainError

    async def body(res, store):
        region = await res.create("region", {"name": "r", "domain": "acme.test"})
        zone = await res.create("zone", {"name": "z"}, region["_id"])
        with pytest.raises(DomainError) as err:
            await project_net.public_subnet(res, region["_id"])
        assert err.value.status == 422 and "no public virtual network" in err.value.reason
        pub = await res.create("vnet", {"name": "pub", "interface": "br1", "private": False}, region["_id"])
        small = await res.create("subnet", {"name": "small", "cidr": "198.51.100.0/29",
                                            "gateway": "198.51.100.1"}, pub["_id"])  # the default: 5 free
        big = await res.create("subnet", {"name": "big", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1",
                                          "reserved": [{"first": "203.0.113.2", "last": "203.0.113.5"}]},
                               pub["_id"])  # 9 free
        await res.create("adapter", {"name": "a", "addresses": ["198.51.100.2", "198.51.100.3"]}, small["_id"])
        assert (await project_net.public_subnet(res, region["_id"], 3))["_id"] == small["_id"]
        assert (await project_net.public_subnet(res, region["_id"], 4))["_id"] == big["_id"]
        await res.set_default("subnet", pub["_id"], big["_id"])
        assert (await project_net.public_subnet(res, region["_id"]))["_id"] == big["_id"]
        with pytest.raises(DomainError) as err:
            await project_net.public_subnet(res, region["_id"], 10)
        assert err.value.status == 507 and "10 free addresses" in err.value.reason

        project = {"_id": "c" * 24, "name": "p", "private_subnets": {}, "zone_gateways": {}}
        with pytest.raises(DomainError) as err:
            await project_net.private_subnet(res, project, region["_id"])
        assert err.value.status == 422 and "region r" in err.value.reason
        with pytest.raises(DomainError) as err:
            await project_net.zone_gateway(res, project, zone["_id"])
        assert err.value.status == 422 and "zone z" in err.value.reason
        upstream = {**project, "private_subnets": {"r": small["_id"]}, "zone_gateways": {"z": "10.0.0.9"}}
        assert (await project_net.private_subnet(res, upstream, region["_id"]))["_id"] == small["_id"]
        assert await project_net.zone_gateway(res, upstream, zone["_id"]) == "10.0.0.9"

    _in_a_store(tmp_path, body)


def test_a_zone_added_after_the_project_gets_the_next_gateway_address(tmp_path):
    from kahuna.resources.errors import DomainError

    async def body(res, store):
        region = await res.create("region", {"name": "r", "domain": "acme.test"})
        first = await res.create("zone", {"name": "z1"}, region["_id"])
        vnet = await res.create("vnet", {"name": "priv", "interface": "br0", "private": True}, region["_id"])
        subnet = await res.create("subnet", {"name": "s", "cidr": "10.9.0.0/24", "gateway": "10.9.0.1",
                                             "gw_pool": [{"first": "10.9.0.250", "last": "10.9.0.251"}]},
                                  vnet["_id"])
        project = {"_id": "d" * 24, "name": "p", "schema_version": 2,
                   "private_subnets": {region["_id"]: subnet["_id"]},
                   "zone_gateways": {first["_id"]: "10.9.0.250"}}
        await store.insert("project", project)
        second = await res.create("zone", {"name": "z2"}, region["_id"])
        assert await project_net.zone_gateway(res, project, second["_id"]) == "10.9.0.251"
        stored_doc = await res.get("project", project["_id"])
        assert stored_doc["zone_gateways"] == {first["_id"]: "10.9.0.250", second["_id"]: "10.9.0.251"}
        # asked again (from the stale copy): the same address, not another one
        assert await project_net.zone_gateway(res, project, second["_id"]) == "10.9.0.251"
        third = await res.create("zone", {"name": "z3"}, region["_id"])
        with pytest.raises(DomainError) as err:  # the pool is used up
            await project_net.zone_gateway(res, stored_doc, third["_id"])
        assert err.value.status == 422 and "zone z3" in err.value.reason

    _in_a_store(tmp_path, body)
