"""Kawaii gateways and their IPsec connections over real HTTP with the official client, two
simulated Kaktus (one per zone) and the appliances' simulated Kontrollers booted from the ISOs
Kahuna gave them: the life cycle (create -> connect -> Reload -> what the appliance configures ->
update -> Reload -> delete leaves nothing), the failure paths (no public network, no free public
address, no host, an agent failing at a step: nothing left), PSK masking and access."""

from __future__ import annotations

import ipaddress
import signal
import threading

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, NotFoundException

from tests.conftest import make_client
from tests.infra.helpers import http, stored, unique, wait_for
from tests.services.appliance_world import NOTHING, boot, closed, iso_meta, leftovers
from tests.services.helpers import flows_left

PSK = "a-long-enough-secret"


@pytest.fixture(scope="module")
def kahuna(appliance_stack):
    return appliance_stack[0]


@pytest.fixture(scope="module")
def world(appliance_stack):
    return appliance_stack[1]


def ipsec_body(**over):
    body = dict(name="hq", remote_ip="203.0.113.7", remote_subnet="172.16.0.0/16", pre_shared_key=PSK,
                phase1_dh_group_number=14, phase1_integrity_algorithm="SHA256", phase1_encryption_algorithm="AES256",
                phase2_dh_group_number=14, phase2_integrity_algorithm="SHA256", phase2_encryption_algorithm="AES256",
                firewall=kowabunga.KawaiiIpSecFirewall(ingress=[kowabunga.KawaiiFirewallIngressRule(
                    source="172.16.0.0/16", ports="22")]))
    body.update(over)
    return kowabunga.KawaiiIpSec(**body)


def test_kawaii_life_cycle(kahuna, world, admin):
    project, region = world["project"], world["region"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects, kawaiis = kowabunga.ProjectApi(member), kowabunga.KawaiiApi(member)
        kawaii = projects.create_project_region_kawaii(project, region, kowabunga.Kawaii(
            name="ignored", description="gw",
            firewall=kowabunga.KawaiiFirewall(ingress=[kowabunga.KawaiiFirewallIngressRule(ports="22,443")]),
            dnat=[kowabunga.KawaiiDNatRule(destination="10.70.1.20", ports="8080")]))
        name = f"kawaii-{world['project_name']}"
        assert (kawaii.name, kawaii.description) == (name, "gw")
        assert kawaii.firewall.ingress[0].source == "0.0.0.0/0" and kawaii.firewall.egress_policy == "accept"
        zones = sorted(kowabunga.ZoneApi(admin).read_zone(z).name for z in world["zones"])
        assert [z.zone for z in kawaii.netip.zones] == zones
        public_net = ipaddress.ip_network("198.51.100.0/27")
        assert len(kawaii.netip.public) == 2 and all(ipaddress.ip_address(a) in public_net for a in kawaii.netip.public)
        assert sorted(kawaii.netip.private) == sorted(world["zone_gateways"].values())
        assert projects.list_project_region_kawaiis(project, region) == [kawaii.id]
        assert kawaiis.list_kawaiis() == [kawaii.id]

        # one per project per region
        with pytest.raises(ApiException) as err:
            projects.create_project_region_kawaii(project, region, kowabunga.Kawaii())
        assert err.value.status == 409

        doc = stored(kahuna, "kawaii", kawaii.id)
        assert len(doc["appliances"]) == 2 and len(set(doc["vrrp_ids"].values())) == 2
        # an appliance's Kompute goes with its Kawaii, never alone through the Kompute routes
        komputes = kowabunga.KomputeApi(member)
        appliance_kompute = doc["appliances"][0]["kompute_id"]
        with pytest.raises(ApiException) as err:
            komputes.delete_kompute(appliance_kompute)
        assert err.value.status == 409 and "appliance of Kawaii" in err.value.body
        assert komputes.read_kompute(appliance_kompute).id == appliance_kompute
        assert sorted(stored(kahuna, "project", project)["reserved_vrrp_ids"]) == sorted(doc["vrrp_ids"].values())
        names = [a["name"] for a in doc["appliances"]]
        for appliance in doc["appliances"]:
            agent = kowabunga.AgentApi(admin).read_agent(appliance["agent_id"])
            assert (agent.name, agent.type) == (appliance["name"], "Kontroller")
            meta = iso_meta(world, appliance["name"])
            assert meta["kowabunga_controller_agent_id"] == appliance["agent_id"]
            assert meta["kowabunga_controller_uri"] == "wss://kowabunga.test/ws"
            assert len(meta["kowabunga_controller_agent_token"]) >= 32
            instance = stored(kahuna, "instance", appliance["instance_id"])
            assert (instance["profile"], instance["profile_id"], instance["vcpus"]) == ("kawaii", kawaii.id, 1)

        # the appliances boot, connect, are reloaded and configure themselves from their profile
        sims = [boot(kahuna, world, n) for n in names]
        states = [s.wait_reloads(1) for s in sims]
        by_zone = {a["zone_id"]: a for a in doc["appliances"]}
        for state, appliance in zip(states, doc["appliances"]):
            assert state["kind"] == "kawaii" and sorted(state["public_vips"]) == sorted(kawaii.netip.public)
            mine = {v["vip"]: v["priority"] for v in state["vips"]}
            own_public = next(v["vip"] for v in doc["virtual_ips"] if v["public"] and v["zone_id"] == appliance["zone_id"])
            assert mine[own_public] == 150 and sorted(mine.values()) == [100, 100, 150, 150]
            assert len(state["vrrp_instances"]) == 2
            rules = state["firewall"]["input_rules"]
            assert {(r["destination_ip"], r["ports"]) for r in rules} == {(ip, "22,443") for ip in kawaii.netip.public}
            assert {(n["public_ip"], n["private_ip"], n["ports"]) for n in state["nat"]} == \
                {(ip, "10.70.1.20", "8080") for ip in kawaii.netip.public}
            assert state["ipsec"] == []
        assert set(by_zone) == set(world["zones"])

        # IPsec: created -> every appliance reloads (upstream forgot); PSK clear for admins only
        ipsecs = kowabunga.KawaiiApi(member)
        conn = ipsecs.create_kawaii_ip_sec(kawaii.id, ipsec_body())
        assert conn.pre_shared_key == PSK and conn.ip in kawaii.netip.public
        assert (conn.dpd_timeout, conn.rekey_time, conn.phase1_lifetime) == ("240s", "2h", "1h")
        assert "pre_shared_key" not in stored(kahuna, "ipsec", conn.id)
        states = [s.wait_reloads(2) for s in sims]
        assert [(c["name"], c["pre_shared_key"], c["phase1_df_group"]) for c in states[0]["ipsec"]] == [
            ("hq", PSK, "modp2048")]
        assert ipsecs.list_kawaii_ip_secs(kawaii.id) == [conn.id]
        with pytest.raises(ApiException) as err:  # same remote peer
            ipsecs.create_kawaii_ip_sec(kawaii.id, ipsec_body(name="other"))
        assert err.value.status == 409
        with make_client(kahuna, api_key=None, token=world["reader"]) as reader:
            seen = kowabunga.KawaiiApi(reader).read_kawaii_ip_sec(kawaii.id, conn.id)
            assert seen.pre_shared_key == "********" and seen.remote_ip == "203.0.113.7"
        assert ipsecs.read_kawaii_ip_sec(kawaii.id, conn.id).pre_shared_key == PSK
        updated = ipsecs.update_kawaii_ip_sec(kawaii.id, conn.id, kowabunga.KawaiiIpSecUpdate(
            pre_shared_key="another-long-secret", rekey_time="4h"))
        assert (updated.pre_shared_key, updated.rekey_time, updated.name) == ("another-long-secret", "4h", "hq")
        states = [s.wait_reloads(3) for s in sims]
        assert states[1]["ipsec"][0]["pre_shared_key"] == "another-long-secret"

        # update: firewall and DNAT replaced -> Reload
        kawaiis.update_kawaii(kawaii.id, kowabunga.KawaiiUpdate(
            description="gw2", firewall=kowabunga.KawaiiFirewall(egress_policy="drop"), dnat=[]))
        states = [s.wait_reloads(4) for s in sims]
        assert all(s["firewall"]["output_default"] == "drop" and s["nat"] == [] and
                   s["firewall"]["input_rules"] == [] for s in states)
        assert kawaiis.read_kawaii(kawaii.id).description == "gw2"

        # delete: refused while an IPsec connection exists, then everything goes
        with pytest.raises(ApiException) as err:
            kawaiis.delete_kawaii(kawaii.id)
        assert err.value.status == 409 and "IPsec" in err.value.body
        assert ipsecs.delete_kawaii_ip_sec(kawaii.id, conn.id) is None
        states = [s.wait_reloads(5) for s in sims]
        assert states[0]["ipsec"] == []
        assert kawaiis.delete_kawaii(kawaii.id) is None
        closed(sims)
        with pytest.raises(NotFoundException):
            kawaiis.read_kawaii(kawaii.id)
    assert leftovers(kahuna, world, project, name) == NOTHING


def test_vpc_peering_with_a_ceph_network(kahuna, world, admin):
    """Each appliance gets an address in the peered subnet (`netip`, per zone); a Ceph subnet's
    peering gets the Ceph/NFS rule first both ways (upstream); the appliance forwards accordingly."""
    from kahuna.resources.appliance_fields import CEPH_PORTS

    ceph = kowabunga.VnetApi(admin).create_v_net_subnet(world["private_vnet"], kowabunga.Subnet(
        name=unique("ceph"), cidr="10.90.0.0/24", gateway="10.90.0.1", application="ceph")).id
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        kawaii = kowabunga.ProjectApi(member).create_project_region_kawaii(world["project"], world["region"], kowabunga.Kawaii(
            vpc_peerings=[kowabunga.KawaiiVpcPeering(subnet=ceph, policy="drop", ingress=[
                kowabunga.KawaiiVpcForwardRule(ports="8080")])]))
        peering = kawaii.vpc_peerings[0]
        assert [r.ports for r in peering.ingress] == [CEPH_PORTS, "8080"] and [r.ports for r in peering.egress] == [CEPH_PORTS]
        zone_names = sorted(kowabunga.ZoneApi(admin).read_zone(z).name for z in world["zones"])
        assert sorted(n.zone for n in peering.netip) == zone_names
        assert all(ipaddress.ip_address(n.private) in ipaddress.ip_network("10.90.0.0/24") for n in peering.netip)
        appliance = stored(kahuna, "kawaii", kawaii.id)["appliances"][0]
        sim = boot(kahuna, world, appliance["name"])
        try:
            forward = sim.wait_reloads(1)["firewall"]["forward_rules"]
            assert {r["ports"] for r in forward} >= {CEPH_PORTS, "8080"}
        finally:
            sim.stop()
        assert kowabunga.KawaiiApi(member).delete_kawaii(kawaii.id) is None
    assert leftovers(kahuna, world, world["project"], "kawaii-") == NOTHING


def test_bad_fields_are_refused_naming_them(kahuna, world):
    path = f"/project/{world['project']}/region/{world['region']}/kawaii"
    for body, where in (({"firewall": {"ingress": [{"ports": "0"}]}}, "firewall.ingress[0].ports"),
                        ({"dnat": [{"destination": "10.0.0.1", "ports": "80", "protocol": "icmp"}]}, "dnat[0].protocol"),
                        ({"vpc_peerings": [{"subnet": "0123456789abcdef01234567"}]}, "vpc_peerings[0].subnet")):
        status, answer = http(kahuna, "POST", path, body, key=None, token=world["member"])
        assert status == 400 and answer["reason"].startswith(where), answer
    assert leftovers(kahuna, world, world["project"], "kawaii-") == NOTHING


def test_failures_leave_nothing(kahuna, world, admin):
    """An agent failing at the second appliance: the first one, both VIPs and VRRP ids undone."""
    project, region = world["project"], world["region"]
    prefix = f"kawaii-{world['project_name']}"
    zone_names = {z: kowabunga.ZoneApi(admin).read_zone(z).name for z in world["zones"]}
    second = max(world["zones"], key=lambda z: zone_names[z])
    failing = world["kaktus"][world["zones"].index(second)]
    failing.faults.fail("CreateInstance", "libvirt: out of luck", times=1)
    status, body = http(kahuna, "POST", f"/project/{project}/region/{region}/kawaii", {}, key=None,
                        token=world["member"])
    assert status == 502 and "out of luck" in body["reason"]
    assert leftovers(kahuna, world, project, prefix) == NOTHING
    assert http(kahuna, "GET", f"/project/{project}/region/{region}/kawaiis")[1] == []

    # no host: the second zone's Kaktus in maintenance (the first appliance is undone)
    kaktuses = kowabunga.KaktusApi(admin)
    kaktuses.enable_kaktus_maintenance(world["nodes"][world["zones"].index(second)])
    try:
        status, body = http(kahuna, "POST", f"/project/{project}/region/{region}/kawaii", {})
        assert status == 503 and "maintenance" in body["reason"], body
    finally:
        kaktuses.disable_kaktus_maintenance(world["nodes"][world["zones"].index(second)])
    assert leftovers(kahuna, world, project, prefix) == NOTHING

    # no public network, then no free public address (a region with neither)
    regions, vnets = kowabunga.RegionApi(admin), kowabunga.VnetApi(admin)
    bare = regions.create_region(kowabunga.Region(name=unique("region"), domain="bare.test")).id
    for _ in range(2):
        regions.create_region_zone(bare, kowabunga.Zone(name=unique("zone")))
    vpc = regions.create_region_v_net(bare, kowabunga.VNet(name=unique("vpc"), vlan=30, interface="br3", private=True))
    vnets.create_v_net_subnet(vpc.id, kowabunga.Subnet(name=unique("vpc"), cidr="10.80.0.0/24", gateway="10.80.0.1",
                                                        gw_pool=[kowabunga.IpRange(first="10.80.0.2", last="10.80.0.3")]))
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[])).id
    lonely = kowabunga.ProjectApi(admin).create_project(kowabunga.Project(name=unique("project"), teams=[team],
                                                                          regions=[bare])).id
    path = f"/project/{lonely}/region/{bare}/kawaii"
    status, body = http(kahuna, "POST", path, {})
    assert status == 422 and "public" in body["reason"], body
    wan = regions.create_region_v_net(bare, kowabunga.VNet(name=unique("wan"), vlan=40, interface="br4", private=False))
    tiny = vnets.create_v_net_subnet(wan.id, kowabunga.Subnet(name=unique("wan"), cidr="192.0.2.0/30", gateway="192.0.2.1"))
    status, body = http(kahuna, "POST", path, {})
    assert status == 507, body
    assert leftovers(kahuna, world, lonely, "kawaii-") == NOTHING
    assert http(kahuna, "GET", f"/subnet/{tiny.id}")[0] == 200


def test_a_member_of_another_project_sees_nothing(kahuna, world):
    project, region = world["project"], world["region"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        kawaii = kowabunga.ProjectApi(member).create_project_region_kawaii(project, region, kowabunga.Kawaii())
        conn = kowabunga.KawaiiApi(member).create_kawaii_ip_sec(kawaii.id, ipsec_body(name="site", remote_ip="203.0.113.9"))
    try:
        with make_client(kahuna, api_key=None, token=world["outsider"]) as outsider:
            api = kowabunga.KawaiiApi(outsider)
            assert api.list_kawaiis() == []
            for call in (lambda: api.read_kawaii(kawaii.id), lambda: api.list_kawaii_ip_secs(kawaii.id),
                         lambda: api.read_kawaii_ip_sec(kawaii.id, conn.id),
                         lambda: api.delete_kawaii(kawaii.id),
                         lambda: kowabunga.ProjectApi(outsider).list_project_region_kawaiis(project, region)):
                with pytest.raises(NotFoundException):
                    call()
        # a connection read under another Kawaii's path is unknown there
        assert http(kahuna, "GET", f"/kawaii/{'0' * 24}/ipsec/{conn.id}")[0] == 404
    finally:
        with make_client(kahuna, api_key=None, token=world["member"]) as member:
            kowabunga.KawaiiApi(member).delete_kawaii_ip_sec(kawaii.id, conn.id)
            kowabunga.KawaiiApi(member).delete_kawaii(kawaii.id)
    wait_for(lambda: leftovers(kahuna, world, project, "kawaii-") == NOTHING, "nothing left")


# last: the Kahuna restarts (new ports)
def test_sigkill_during_a_kawaii_create_is_undone_at_restart(kahuna, world, admin):
    """Killed once the second appliance's domain exists on its Kaktus (the reply held back): the
    restarted Kahuna undoes the whole create — both appliances, VIPs, VRRP ids, agents."""
    project, region = world["project"], world["region"]
    prefix = f"kawaii-{world['project_name']}"
    zone_names = {z: kowabunga.ZoneApi(admin).read_zone(z).name for z in world["zones"]}
    last = world["kaktus"][world["zones"].index(max(world["zones"], key=lambda z: zone_names[z]))]
    last.faults.delay_reply("CreateInstance", 1.0)
    request = threading.Thread(target=lambda: _quietly(http, kahuna, "POST",
                                                       f"/project/{project}/region/{region}/kawaii", {}))
    request.start()
    try:
        wait_for(lambda: any(d.startswith(prefix) for d in last.domains()), "the second appliance's domain", 20)
        kahuna.proc.send_signal(signal.SIGKILL)
        kahuna.proc.wait(10)
    finally:
        last.faults.clear()
        request.join(30)
    assert flows_left(kahuna) >= 1  # what the dead process left
    kahuna.start()
    for sim in world["kaktus"]:
        sim.start(f"ws://127.0.0.1:{kahuna.hub_port}/ws")
    for sim in world["kaktus"]:
        sim.wait_connected()
    wait_for(lambda: flows_left(kahuna) == 0, "the restarted Kahuna to recover the flows", 30)
    assert leftovers(kahuna, world, project, prefix) == NOTHING
    assert http(kahuna, "GET", f"/project/{project}/region/{region}/kawaiis")[1] == []


def _quietly(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # the connection dies with the killed Kahuna
        return exc
