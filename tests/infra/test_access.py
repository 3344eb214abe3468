"""Who may do what on the infrastructure routes (kahuna.auth.policy): superAdmin everything; a
user with a project in a region may read that region's catalogue (storage pools, NFS storages,
virtual networks, subnets) and nothing else of the infrastructure; writes are superAdmin's."""

from __future__ import annotations

import kowabunga
import pytest

from tests.conftest import make_client
from tests.identity.helpers import create_confirmed_user, identity_config, login
from tests.infra.helpers import create_agents, http, region_and_zone, unique
from tests.kahuna_proc import Kahuna


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    work = tmp_path_factory.mktemp("infra-access")
    config = identity_config(work, smtp_sink)
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


@pytest.fixture(scope="module")
def world(admin, kahuna, smtp_sink):
    """Two regions with the same infrastructure; a user whose only project is in the first."""
    kaktus_agent = create_agents(kahuna, "Kaktus", 1)[0]
    out = {}
    for key in ("mine", "other"):
        region, zone = region_and_zone(admin)
        regions = kowabunga.RegionApi(admin)
        pool = regions.create_region_storage_pool(region, kowabunga.StoragePool(
            name=unique("pool"), pool="rbd", agents=[kaktus_agent["id"]]))
        nfs = regions.create_region_storage_nfs(region, kowabunga.StorageNFS(
            name=unique("nfs"), endpoint="nfs.acme.test", backends=["10.0.0.1"]))
        vnet = regions.create_region_v_net(region, kowabunga.VNet(name=unique("vnet"), interface="br0"))
        subnet = kowabunga.VnetApi(admin).create_v_net_subnet(vnet.id, kowabunga.Subnet(
            name=unique("subnet"), cidr="10.1.0.0/24", gateway="10.1.0.1"))
        adapter = kowabunga.SubnetApi(admin).create_subnet_adapter(subnet.id, kowabunga.Adapter(name="nic"))
        kaktus = kowabunga.ZoneApi(admin).create_zone_kaktus(zone, kowabunga.Kaktus(
            name=unique("hv"), agents=[kaktus_agent["id"]]))
        kiwi = regions.create_region_kiwi(region, kowabunga.Kiwi(name=unique("kiwi")))
        record = regions.create_region_dns_record(region, kowabunga.DnsRecord(name="www", addresses=["10.1.0.5"]))
        out[key] = {"region": region, "zone": zone, "pool": pool.id, "nfs": nfs.id, "vnet": vnet.id,
                    "subnet": subnet.id, "adapter": adapter.id, "kaktus": kaktus.id, "kiwi": kiwi.id,
                    "record": record.id}
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[user.id]))
    kowabunga.ProjectApi(admin).create_project(kowabunga.Project(
        name=unique("project"), teams=[team.id], regions=[out["mine"]["region"]]))
    out["token"] = login(kahuna, user.email, password)
    return out


CATALOGUE = (("pool", "pool"), ("nfs", "nfs"), ("vnet", "vnet"), ("subnet", "subnet"))
ADMIN_ONLY = (("kaktus", "kaktus"), ("kiwi", "kiwi"), ("adapter", "adapter"), ("record", "record"))


def as_user(kahuna, world, method: str, path: str, body=None) -> tuple[int, object]:
    return http(kahuna, method, path, body, key=None, token=world["token"])


def test_users_read_the_catalogue_of_their_regions_only(kahuna, world):
    mine, other = world["mine"], world["other"]
    for kind, key in CATALOGUE:
        status, body = as_user(kahuna, world, "GET", f"/{kind}/{mine[key]}")
        assert status == 200 and body["id"] == mine[key], (kind, body)
        # another region's object is a 404, worded exactly like an unknown id
        status, body = as_user(kahuna, world, "GET", f"/{kind}/{other[key]}")
        assert status == 404 and other[key] in body["reason"], (kind, body)
        status, listed = as_user(kahuna, world, "GET", f"/{kind}")
        assert status == 200 and mine[key] in listed and other[key] not in listed, (kind, listed)
    status, listed = as_user(kahuna, world, "GET", f"/region/{mine['region']}/pools")
    assert status == 200 and listed == [mine["pool"]]
    status, listed = as_user(kahuna, world, "GET", f"/vnet/{mine['vnet']}/subnets")
    assert status == 200 and listed == [mine["subnet"]]
    status, _ = as_user(kahuna, world, "GET", f"/vnet/{other['vnet']}/subnets")
    assert status == 404
    status, listed = as_user(kahuna, world, "GET", f"/region/{other['region']}/pools")
    assert status == 200 and listed == []


def test_users_may_not_write_or_see_the_rest(kahuna, world):
    mine = world["mine"]
    for kind, key in CATALOGUE + ADMIN_ONLY:
        for method, path, body in (("PUT", f"/{kind}/{mine[key]}", {"description": "x"}),
                                   ("DELETE", f"/{kind}/{mine[key]}", None)):
            status, answer = as_user(kahuna, world, method, path, body)
            assert status == 403, (method, path, answer)
    for kind, key in ADMIN_ONLY:
        for path in (f"/{kind}/{mine[key]}", f"/{kind}"):
            status, answer = as_user(kahuna, world, "GET", path)
            assert status == 403, (path, answer)
    for method, path, body in (
            ("POST", f"/region/{mine['region']}/pool", {"name": "p", "pool": "rbd", "agents": []}),
            ("POST", f"/region/{mine['region']}/record", {"name": "x", "addresses": ["10.0.0.1"]}),
            ("POST", f"/subnet/{mine['subnet']}/adapter?assignIP=true", {"name": "x"}),
            ("POST", f"/zone/{mine['zone']}/kaktus", {"name": "x", "agents": []}),
            ("PATCH", f"/region/{mine['region']}/pool/{mine['pool']}/default", None),
            ("PATCH", f"/vnet/{mine['vnet']}/subnet/{mine['subnet']}/default", None),
            ("PATCH", f"/kaktus/{mine['kaktus']}/maintenance/enable", None),
            ("GET", f"/kaktus/{mine['kaktus']}/caps", None),
            ("GET", f"/pool/{mine['pool']}/volumes", None),
            ("GET", f"/nfs/{mine['nfs']}/kylos", None),
            ("GET", f"/region/{mine['region']}/records", None)):
        status, answer = as_user(kahuna, world, method, path, body)
        assert status == 403, (method, path, answer)


def test_unauthenticated_is_401_everywhere(kahuna, world):
    mine = world["mine"]
    for path in ("/pool", f"/pool/{mine['pool']}", f"/kaktus/{mine['kaktus']}/caps",
                 f"/region/{mine['region']}/pool/{mine['pool']}/default"):
        method = "PATCH" if path.endswith("default") else "GET"
        status, _ = http(kahuna, method, path, key=None)
        assert status == 401, path


def test_superadmin_by_jwt_too(kahuna, admin, smtp_sink, world):
    user, password = create_confirmed_user(kahuna, admin, smtp_sink, role="superAdmin")
    with make_client(kahuna, api_key=None, token=login(kahuna, user.email, password)) as client:
        assert world["other"]["kaktus"] in kowabunga.KaktusApi(client).list_kaktuses()
        kowabunga.KaktusApi(client).enable_kaktus_maintenance(world["other"]["kaktus"])
        assert kowabunga.KaktusApi(client).read_kaktus(world["other"]["kaktus"]).maintenance is True
