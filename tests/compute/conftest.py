"""Fixtures of the compute tests: one real Kahuna per module (mail to a sink so that users can be
confirmed, a short agent call timeout, no document cache: tests read the store next to it) and the
in-process simulated Kaktus agents of agent.sim.harness, over the real hub."""

from __future__ import annotations

import kowabunga
import pytest

from agent.sim.harness import SimHost
from agent.sim.model import GiB
from tests.identity.helpers import create_confirmed_user, login
from tests.services.helpers import give_private_subnet
from tests.infra.helpers import agent_status, create_agents, region_and_zone, stored, tenant_kahuna, unique, wait_for

SOURCE = "https://images.test/noble.qcow2"


def networks(admin, region: str) -> dict:
    """A private VNet (bridge br-priv) with two /24 subnets (one per project) and a public VNet
    (bridge br-pub, 198.51.100.0/24, gateway .1) in the region."""
    regions, vnets = kowabunga.RegionApi(admin), kowabunga.VnetApi(admin)
    priv = regions.create_region_v_net(region, kowabunga.VNet(name=unique("vnet"), vlan=10, interface="br-priv",
                                                              private=True))
    pub = regions.create_region_v_net(region, kowabunga.VNet(name=unique("vnet"), vlan=20, interface="br-pub",
                                                             private=False))
    out = {"private_vnet": priv.id, "public_vnet": pub.id}
    for key, net in (("private", "10.50.0"), ("other", "10.51.0")):
        out[key] = vnets.create_v_net_subnet(priv.id, kowabunga.Subnet(
            name=unique("subnet"), cidr=f"{net}.0/24", gateway=f"{net}.1",
            gw_pool=[kowabunga.IpRange(first=f"{net}.2", last=f"{net}.4")])).id
    out["public"] = vnets.create_v_net_subnet(pub.id, kowabunga.Subnet(
        name=unique("subnet"), cidr="198.51.100.0/24", gateway="198.51.100.1")).id
    return out


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    with tenant_kahuna(tmp_path_factory, smtp_sink, "compute") as k:
        yield k


@pytest.fixture(scope="module")
def host():
    with SimHost() as h:
        yield h


@pytest.fixture(scope="module")
def world(admin, kahuna, smtp_sink, host):
    """A region with a zone, one sim Kaktus holding pool `ssd`, a template, and two projects:
    `project` (team of `member`) and `other` (team of `outsider`)."""
    regions = kowabunga.RegionApi(admin)
    region, zone = region_and_zone(admin)
    agent = create_agents(kahuna, "Kaktus")[0]
    kaktus = host.kaktus(agent["id"], agent["key"], f"ws://127.0.0.1:{kahuna.hub_port}/ws",
                         pools={"ssd": 100 * GiB}, libvirt_address="10.0.0.11")
    kaktus.wait_connected()
    wait_for(lambda: agent_status(kahuna, agent["id"])["connected"], "Kahuna to see the sim")
    node = kowabunga.ZoneApi(admin).create_zone_kaktus(zone, kowabunga.Kaktus(
        name=unique("kaktus"), agents=[agent["id"]],
        cpu_cost=kowabunga.Cost(price=0, currency="EUR"), memory_cost=kowabunga.Cost(price=0, currency="EUR")))
    wait_for(lambda: kowabunga.KaktusApi(admin).read_kaktus_caps(node.id).memory, "the Kaktus capabilities")
    pool = regions.create_region_storage_pool(region, kowabunga.StoragePool(
        name=unique("pool"), pool="ssd", agents=[agent["id"]]))
    template = kowabunga.PoolApi(admin).create_storage_pool_template(
        pool.id, kowabunga.Template(name="noble", source=SOURCE))
    member, password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    outsider, other_password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    teams = kowabunga.TeamApi(admin)
    team = teams.create_team(kowabunga.Team(name=unique("team"), users=[member.id]))
    other_team = teams.create_team(kowabunga.Team(name=unique("team"), users=[outsider.id]))
    nets = networks(admin, region)
    projects = kowabunga.ProjectApi(admin)
    project = projects.create_project(kowabunga.Project(
        name=unique("project"), teams=[team.id], regions=[region],
        quotas=kowabunga.ProjectResources(storage=40 * GiB)))
    other = projects.create_project(kowabunga.Project(name=unique("project"), teams=[other_team.id],
                                                      regions=[region]))
    for p, key in ((project.id, "private"), (other.id, "other")):
        subnets = stored(kahuna, "project", p).get("private_subnets") or {}
        if region in subnets:  # reserved at the project's creation
            nets[key] = subnets[region]
        else:
            give_private_subnet(kahuna, p, region, nets[key])
    return {**nets, "host": host, "region": region, "zone": zone, "kaktus": kaktus, "kaktus_id": node.id, "pool": pool.id, "template": template.id,
            "project": project.id, "other": other.id,
            "member": login(kahuna, member.email, password),
            "outsider": login(kahuna, outsider.email, other_password)}


def project_with_subnet(kahuna, admin, world, net: str, **fields) -> str:
    """A project of the world's region with its own private subnet `<net>.0/24` (gateway .1,
    gateway pool .2-.4): reserved at creation when the project networks do it, else given."""
    subnet = kowabunga.VnetApi(admin).create_v_net_subnet(world["private_vnet"], kowabunga.Subnet(
        name=unique("subnet"), cidr=f"{net}.0/24", gateway=f"{net}.1",
        gw_pool=[kowabunga.IpRange(first=f"{net}.2", last=f"{net}.4")])).id
    fields.setdefault("teams", [kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[])).id])
    project = kowabunga.ProjectApi(admin).create_project(kowabunga.Project(
        name=unique("project"), regions=[world["region"]], **fields)).id
    if world["region"] not in (stored(kahuna, "project", project).get("private_subnets") or {}):
        give_private_subnet(kahuna, project, world["region"], subnet)
    return project


@pytest.fixture(scope="module")
def kiwi(kahuna, world, admin):
    """A simulated Kiwi, the DNS agent of the world's region."""
    agent = create_agents(kahuna, "Kiwi")[0]
    sim = world["host"].kiwi(agent["id"], agent["key"], f"ws://127.0.0.1:{kahuna.hub_port}/ws")
    sim.wait_connected()
    wait_for(lambda: agent_status(kahuna, agent["id"])["connected"], "Kahuna to see the Kiwi")
    kowabunga.RegionApi(admin).create_region_kiwi(world["region"], kowabunga.Kiwi(name=unique("kiwi"),
                                                                                  agents=[agent["id"]]))
    return sim


@pytest.fixture(scope="module")
def corp(kahuna, world, admin):
    """A project with domain corp.test and its own private subnet 10.52.0.0/24."""
    project = project_with_subnet(kahuna, admin, world, "10.52.0", domain="corp.test",
                                  quotas=kowabunga.ProjectResources(storage=40 * GiB))
    return {"id": project, "subnet": stored(kahuna, "project", project)["private_subnets"][world["region"]]}
