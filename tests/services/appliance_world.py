"""The world of the appliance tests (Kawaii, Konvey): one region with two zones, one simulated
Kaktus per zone (in-process, agent.sim.harness), a storage pool and template on the first, a
private VNet for the projects' subnets (reserved at project creation by the project networks),
a public VNet, and the people: a projectAdmin member, a plain user member, an outsider."""

from __future__ import annotations

import kowabunga
import yaml

from agent.sim.model import GiB
from tests.identity.helpers import create_confirmed_user, login
from tests.infra.helpers import agent_status, create_agents, region_and_zone, stored, unique, wait_for

POOL = "ssd"
SOURCE = "https://images.test/appliance.qcow2"
METADATA_PATH = "/latest/meta-data"


def build(kahuna, admin, smtp_sink, host, *, public_cidr: str = "198.51.100.0/27") -> dict:
    regions, vnets, zones_api = kowabunga.RegionApi(admin), kowabunga.VnetApi(admin), kowabunga.ZoneApi(admin)
    region, first_zone = region_and_zone(admin)
    second_zone = regions.create_region_zone(region, kowabunga.Zone(name=unique("zone"))).id
    agents = create_agents(kahuna, "Kaktus", 2)
    endpoint = f"ws://127.0.0.1:{kahuna.hub_port}/ws"
    kaktuses, nodes = [], []
    for i, (agent, zone) in enumerate(zip(agents, (first_zone, second_zone))):
        sim = host.kaktus(agent["id"], agent["key"], endpoint, pools={POOL: 200 * GiB} if i == 0 else {},
                          libvirt_address=f"10.0.0.{11 + i}")
        sim.wait_connected()
        wait_for(lambda a=agent: agent_status(kahuna, a["id"])["connected"], "Kahuna to see the sim")
        node = zones_api.create_zone_kaktus(zone, kowabunga.Kaktus(
            name=unique("kaktus"), agents=[agent["id"]],
            cpu_cost=kowabunga.Cost(price=0, currency="EUR"), memory_cost=kowabunga.Cost(price=0, currency="EUR")))
        wait_for(lambda n=node: kowabunga.KaktusApi(admin).read_kaktus_caps(n.id).memory, "the Kaktus capabilities")
        kaktuses.append(sim)
        nodes.append(node.id)
    pool = regions.create_region_storage_pool(region, kowabunga.StoragePool(
        name=unique("pool"), pool=POOL, agents=[agents[0]["id"]]))
    kowabunga.PoolApi(admin).create_storage_pool_template(pool.id, kowabunga.Template(name="appliance", source=SOURCE))
    private = regions.create_region_v_net(region, kowabunga.VNet(name=unique("vpc"), vlan=10, interface="br-priv",
                                                                 private=True))
    for i in (1, 2):
        vnets.create_v_net_subnet(private.id, kowabunga.Subnet(
            name=unique("vpc"), cidr=f"10.70.{i}.0/24", gateway=f"10.70.{i}.1",
            gw_pool=[kowabunga.IpRange(first=f"10.70.{i}.2", last=f"10.70.{i}.4")]))
    public = regions.create_region_v_net(region, kowabunga.VNet(name=unique("wan"), vlan=20, interface="br-pub",
                                                                private=False))
    gateway = public_cidr.rsplit(".", 1)[0] + "." + str(int(public_cidr.rsplit(".", 1)[1].split("/")[0]) + 1)
    public_subnet = vnets.create_v_net_subnet(public.id, kowabunga.Subnet(
        name=unique("wan"), cidr=public_cidr, gateway=gateway)).id
    member, password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    reader, reader_password = create_confirmed_user(kahuna, admin, smtp_sink, role="user")
    outsider, other_password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    teams = kowabunga.TeamApi(admin)
    team = teams.create_team(kowabunga.Team(name=unique("team"), users=[member.id, reader.id]))
    other_team = teams.create_team(kowabunga.Team(name=unique("team"), users=[outsider.id]))
    projects = kowabunga.ProjectApi(admin)
    project = projects.create_project(kowabunga.Project(name=unique("project"), teams=[team.id], regions=[region]))
    other = projects.create_project(kowabunga.Project(name=unique("project"), teams=[other_team.id], regions=[region]))
    doc = stored(kahuna, "project", project.id)
    assert region in (doc.get("private_subnets") or {}), "the project networks reserve a private subnet"
    assert len(doc.get("zone_gateways") or {}) == 2, doc.get("zone_gateways")
    return {"region": region, "zones": [first_zone, second_zone], "kaktus": kaktuses, "nodes": nodes,
            "pool": pool.id, "public_subnet": public_subnet, "public_vnet": public.id, "private_vnet": private.id,
            "private_subnet": doc["private_subnets"][region], "zone_gateways": doc["zone_gateways"],
            "project": project.id, "project_name": project.name, "other": other.id, "host": host,
            "member": login(kahuna, member.email, password), "reader": login(kahuna, reader.email, reader_password),
            "outsider": login(kahuna, outsider.email, other_password)}


def iso_meta(world, instance_name: str) -> dict:
    """The appliance's meta-data, as it reads it from its CD-ROM (the ISO the pool's Kaktus keeps)."""
    return yaml.safe_load(world["kaktus"][0].iso_files(POOL, f"{instance_name}-cloudinit")["meta-data"])


def boot(kahuna, world, instance_name: str):
    """The appliance's simulated Kontroller, booted from its ISO (the test reaches the hub and the
    metadata service on loopback rather than through publicUrl)."""
    return world["host"].kontroller(world["kaktus"][0], POOL, f"{instance_name}-cloudinit",
                                    endpoint=f"ws://127.0.0.1:{kahuna.hub_port}/ws",
                                    metadata_url=kahuna.url + METADATA_PATH)


def closed(sims) -> None:
    """The hub closed each appliance's session (its agent went with the appliance); stop them."""
    for sim in sims:
        sim.wait_disconnected()
        sim.stop()


def leftovers(kahuna, world, project_id: str, prefix: str) -> dict:
    """What could be left of the appliances whose names start with `prefix`: adapters (VIPs and
    NICs), instances, Komputes, images, domains, Kontroller agents, VRRP ids, unfinished flows."""
    from tests.infra.helpers import http
    from tests.services.helpers import flows_left

    def named(collection: str) -> list[str]:
        return [i for i in http(kahuna, "GET", f"/{collection}")[1]
                if http(kahuna, "GET", f"/{collection}/{i}")[1]["name"].startswith(prefix)]

    return {"adapters": named("adapter"), "agents": named("agent"), "instances": named("instance"),
            "komputes": named("kompute"),
            "images": sorted(i for i in world["kaktus"][0].images(POOL) if i.startswith(prefix)),
            "domains": sorted(d for k in world["kaktus"] for d in k.domains() if d.startswith(prefix)),
            "vrrp": stored(kahuna, "project", project_id).get("reserved_vrrp_ids") or [],
            "flows": flows_left(kahuna)}


NOTHING = {"adapters": [], "agents": [], "instances": [], "komputes": [], "images": [], "domains": [], "vrrp": [],
           "flows": 0}
