"""Instance metadata end to end (issue 10): Komputes and appliances created through the official
client against a real Kahuna and an in-process simulated Kaktus; each instance's token is read
back from the cloud-init `meta-data` of the ISO the Kaktus was given, then the profile is read
over real HTTP the way the instance would.

The instances' private addresses are RFC 1918 (the project subnets are 10.50.x.0/26), which a
test cannot bind on loopback: the requests come through a trusted front proxy instead
(`global.http.trustedProxies: [127.0.0.1]`, `X-Forwarded-For` = the address the proxy saw).
127.0.0.3 is an untrusted peer, whose X-Forwarded-For must count for nothing.
"""

from __future__ import annotations

import base64
import json
import uuid

import kowabunga
import pytest
import yaml

from agent.sim.harness import SimHost
from agent.sim.model import GiB
from kahuna.metadata.profile import BASE_FIELDS, IPSEC_FIELDS, KAWAII_FIELDS, KONVEY_FIELDS, NAT_FIELDS, VIP_FIELDS
from tests.infra.helpers import (CALL_TIMEOUT, agent_status, create_agents, region_and_zone, stored, unique,
                                 wait_for)
from tests.kahuna_proc import Kahuna, write_config
from tests.metadata.helpers import BASE_TYPES, KAWAII_LISTS, PATH, VIP_TYPES, check_types, conn, get

PROXY, UNTRUSTED = "127.0.0.1", "127.0.0.3"
PUBLIC_URL = "https://kowabunga.test"
PSK = "psk-" + uuid.uuid4().hex
POOL = "ssd"


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    work = tmp_path_factory.mktemp("kahuna-metadata-e2e")
    # DEBUG: the secrets test greps every line the daemon writes, request lines included
    config = write_config(work / "kahuna.yml", work / "data", publicUrl=PUBLIC_URL, logLevel="DEBUG",
                          http={"trustedProxies": [PROXY]}, ws={"callTimeout": CALL_TIMEOUT})
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


@pytest.fixture(scope="module")
def host():
    with SimHost() as h:
        yield h


def booted(kahuna, kaktus, kompute_id: str) -> dict:
    """What the instance of a Kompute knows from its CD-ROM: meta-data, and its document."""
    return instance_facts(kahuna, kaktus, stored(kahuna, "kompute", kompute_id)["instance_id"])


def instance_facts(kahuna, kaktus, instance_id: str) -> dict:
    instance = {**stored(kahuna, "instance", instance_id), "_id": instance_id}
    files = kaktus.iso_files(POOL, instance["iso_volume"])
    meta = yaml.safe_load(files["meta-data"])
    return {"id": meta["instance-id"], "token": meta["kowabunga_metadata_token"], "ip": meta["kowabunga_local_ip"],
            "meta": meta, "files": files, "doc": instance, "name": instance["name"]}


@pytest.fixture(scope="module")
def world(kahuna, admin, host):
    """A region (one zone) with a private VNet (two /26 project subnets) and a public one, a
    simulated Kaktus with pool `ssd` and a template; projects p1 (two Komputes) and p2 (one)."""
    region, zone = region_and_zone(admin)
    regions, vnets = kowabunga.RegionApi(admin), kowabunga.VnetApi(admin)
    private = regions.create_region_v_net(region, kowabunga.VNet(name=unique("vpc"), vlan=100, interface="br100",
                                                                 private=True))
    subnets = [vnets.create_v_net_subnet(private.id, kowabunga.Subnet(
        name=unique("vpc"), cidr=f"10.50.{i}.0/26", gateway=f"10.50.{i}.1", extra_routes=["10.60.0.0/16"],
        gw_pool=[kowabunga.IpRange(first=f"10.50.{i}.2", last=f"10.50.{i}.3")])) for i in (1, 2)]
    public = regions.create_region_v_net(region, kowabunga.VNet(name=unique("wan"), vlan=0, interface="br0",
                                                                private=False))
    vnets.create_v_net_subnet(public.id, kowabunga.Subnet(name=unique("wan"), cidr="198.51.100.0/26",
                                                          gateway="198.51.100.1"))
    agent = create_agents(kahuna, "Kaktus")[0]
    kaktus = host.kaktus(agent["id"], agent["key"], f"ws://127.0.0.1:{kahuna.hub_port}/ws",
                         pools={POOL: 200 * GiB}, libvirt_address="10.0.0.11")
    kaktus.wait_connected()
    wait_for(lambda: agent_status(kahuna, agent["id"])["connected"], "Kahuna to see the sim")
    node = kowabunga.ZoneApi(admin).create_zone_kaktus(zone, kowabunga.Kaktus(
        name=unique("kaktus"), agents=[agent["id"]],
        cpu_cost=kowabunga.Cost(price=0, currency="EUR"), memory_cost=kowabunga.Cost(price=0, currency="EUR")))
    wait_for(lambda: kowabunga.KaktusApi(admin).read_kaktus_caps(node.id).memory, "the Kaktus capabilities")
    pool = regions.create_region_storage_pool(region, kowabunga.StoragePool(name=unique("pool"), pool=POOL,
                                                                            agents=[agent["id"]]))
    kowabunga.PoolApi(admin).create_storage_pool_template(
        pool.id, kowabunga.Template(name="noble", source="https://images.test/noble.qcow2"))
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[]))
    projects = kowabunga.ProjectApi(admin)
    p1 = projects.create_project(kowabunga.Project(name=unique("p1"), domain="p1.acme.test", tags=["web"],
                                                   teams=[team.id], regions=[region]), subnet_size=26)
    p2 = projects.create_project(kowabunga.Project(name=unique("p2"), teams=[team.id], regions=[region]),
                                 subnet_size=26)

    def kompute(project, name):
        vm = projects.create_project_zone_kompute(project.id, zone, kowabunga.Kompute(
            name=unique(name), description=f"{name} desc", memory=2 * GiB, vcpus=2, disk=4 * GiB))
        return {**booted(kahuna, kaktus, vm.id), "kompute_id": vm.id}

    return {"region": region, "zone": zone, "kaktus": kaktus, "kaktus_name": node.name, "p1": p1, "p2": p2,
            "subnets": {s.id: s.cidr for s in subnets}, "alpha": kompute(p1, "alpha"), "beta": kompute(p1, "beta"),
            "gamma": kompute(p2, "gamma")}


def by_token(vm: dict, token: str | None = None, instance_id: str | None = None) -> dict:
    return {"X-Kowabunga-Instance-Id": instance_id or vm["id"], "X-Kowabunga-Instance-Token": token or vm["token"]}


def by_source(vm: dict, seen_from: str, instance_id: str | None = None) -> dict:
    """Upstream's headers, through the proxy that saw the request come from `seen_from`."""
    return {"X-Kowabunga-Instance-Id": instance_id or vm["id"], "X-Kowabunga-Source-Ip": vm["ip"],
            "X-Forwarded-For": seen_from}


def read(kahuna, vm: dict) -> dict:
    status, body, _ = get(conn(kahuna, PROXY), {**by_token(vm), "X-Forwarded-For": vm["ip"]})
    assert status == 200, body
    return body


def test_meta_data_on_the_iso_carries_what_the_instance_needs(kahuna, world):
    alpha = world["alpha"]
    meta = alpha["meta"]
    assert meta["kowabunga_metadata_uri"] == PUBLIC_URL + PATH
    assert meta["instance-id"] == alpha["doc"]["_id"] and meta["kowabunga_local_ip"] == alpha["doc"]["local_ip"]
    assert alpha["ip"].startswith("10.50.") and len(alpha["token"]) == 43
    # an ordinary instance has no Kontroller credentials; the kw-meta helper sends the token
    assert not any(k.startswith("kowabunga_controller") for k in meta)
    (kw_meta,) = [f for f in yaml.safe_load(alpha["files"]["user-data"])["write_files"]
                  if f["path"] == "/usr/bin/kw-meta"]
    assert "X-Kowabunga-Instance-Token: ${KW_TOKEN}" in base64.b64decode(kw_meta["content"]).decode()
    assert len({world[v]["token"] for v in ("alpha", "beta", "gamma")}) == 3


def test_an_instance_reads_its_own_profile_with_its_token(kahuna, world, admin):
    alpha, p1 = world["alpha"], world["p1"]
    body = read(kahuna, alpha)
    assert set(body) == set(BASE_FIELDS)
    check_types(body, BASE_TYPES)
    (pair,) = kowabunga.ProjectApi(admin).read_project(p1.id).private_subnets
    assert body == {
        "instance-id": alpha["id"], "local-hostname": alpha["name"], "description": "alpha desc",
        "kaktus": world["kaktus_name"], "vcpu": 2, "mem_gb": 2, "local-ipv4": alpha["ip"],
        "subnet_cidr": world["subnets"][pair.value], "template": "noble", "monthly_cost": body["monthly_cost"],
        "project": p1.name, "domain": "p1.acme.test",
        "zone": kowabunga.ZoneApi(admin).read_zone(world["zone"]).name,
        "region": kowabunga.RegionApi(admin).read_region(world["region"]).name, "tags": ["web"], "peers": []}
    assert body["monthly_cost"].endswith(" EUR") and float(body["monthly_cost"].split()[0]) >= 0
    # the token works from anywhere (it is the proof), also straight from the peer
    status, again, _ = get(conn(kahuna, UNTRUSTED), by_token(alpha))
    assert status == 200 and again == body


def test_upstream_headers_only_from_the_instances_own_address(kahuna, world):
    alpha, beta, gamma = world["alpha"], world["beta"], world["gamma"]
    status, body, _ = get(conn(kahuna, PROXY), by_source(alpha, alpha["ip"]))
    assert status == 200 and body["instance-id"] == alpha["id"] and body["local-ipv4"] == alpha["ip"]
    # right id and declared IP, but seen coming from another instance (same project, other project)
    assert get(conn(kahuna, PROXY), by_source(alpha, beta["ip"]))[0] == 403
    assert get(conn(kahuna, PROXY), by_source(alpha, gamma["ip"]))[0] == 403
    # its own address declaring another instance's id
    assert get(conn(kahuna, PROXY), {**by_source(alpha, alpha["ip"], instance_id=beta["id"])})[0] == 403
    # a spoofed X-Forwarded-For from a peer that is not a trusted proxy counts for nothing
    assert get(conn(kahuna, UNTRUSTED), by_source(alpha, alpha["ip"]))[0] == 403
    # a proxy appends what it saw: the instance's own claim earlier in the chain is not it
    assert get(conn(kahuna, PROXY), by_source(alpha, f"{alpha['ip']}, {beta['ip']}"))[0] == 403


def test_other_instances_cannot_read_it_with_their_tokens(kahuna, world):
    alpha, beta, gamma = world["alpha"], world["beta"], world["gamma"]
    same_project = get(conn(kahuna, PROXY), {**by_token(alpha, beta["token"]), "X-Forwarded-For": beta["ip"]})
    other_project = get(conn(kahuna, PROXY), {**by_token(alpha, gamma["token"]), "X-Forwarded-For": gamma["ip"]})
    unknown = get(conn(kahuna, PROXY), {**by_token(alpha, instance_id="0" * 24), "X-Forwarded-For": alpha["ip"]})
    assert same_project[0] == other_project[0] == unknown[0] == 403
    assert same_project[1] == other_project[1] == unknown[1]  # nothing tells an id that exists
    assert alpha["id"] not in json.dumps(same_project[1])
    # and each reads only itself
    assert read(kahuna, beta)["instance-id"] == beta["id"] and read(kahuna, gamma)["project"] == world["p2"].name


def test_the_profile_follows_api_changes(kahuna, world, admin):
    alpha, p1 = world["alpha"], world["p1"]
    projects = kowabunga.ProjectApi(admin)
    renamed = unique("renamed")
    projects.update_project(p1.id, kowabunga.ProjectUpdate(name=renamed, tags=["web", "blue"]))
    kowabunga.KomputeApi(admin).update_kompute(alpha["kompute_id"], kowabunga.KomputeUpdate(
        name=alpha["name"], description="alpha, renamed project", memory=2 * GiB, vcpus=2, disk=4 * GiB))
    body = read(kahuna, alpha)
    assert (body["project"], body["tags"], body["description"]) == (renamed, ["web", "blue"], "alpha, renamed project")
    assert read(kahuna, world["gamma"])["project"] == world["p2"].name


# ------------------------------------------------------------------------------------- appliances

@pytest.fixture(scope="module")
def kawaii(kahuna, world, admin, host):
    """The Kawaii of p1 (one appliance in the one zone) with a firewall rule, a DNAT rule to
    alpha and an IPsec connection; its Kontroller booted from the appliance's own ISO."""
    p1, alpha = world["p1"], world["alpha"]
    gw = kowabunga.ProjectApi(admin).create_project_region_kawaii(p1.id, world["region"], kowabunga.Kawaii(
        firewall=kowabunga.KawaiiFirewall(
            ingress=[kowabunga.KawaiiFirewallIngressRule(source="0.0.0.0/0", protocol="tcp", ports="22")],
            egress_policy="accept", egress=[]),
        dnat=[kowabunga.KawaiiDNatRule(destination=alpha["ip"], protocol="tcp", ports="8080")]))
    ipsec = kowabunga.KawaiiApi(admin).create_kawaii_ip_sec(gw.id, kowabunga.KawaiiIpSec(
        name="to-hq", remote_ip="203.0.113.7", remote_subnet="10.200.0.0/16", pre_shared_key=PSK,
        phase1_dh_group_number=14, phase1_integrity_algorithm="SHA256", phase1_encryption_algorithm="AES256",
        phase2_dh_group_number=19, phase2_integrity_algorithm="SHA256", phase2_encryption_algorithm="AES256",
        firewall=kowabunga.KawaiiIpSecFirewall(ingress=[
            kowabunga.KawaiiFirewallIngressRule(source="10.200.0.0/16", protocol="tcp", ports="443")])))
    doc = stored(kahuna, "kawaii", gw.id)
    (member,) = doc["appliances"]
    appliance = instance_facts(kahuna, world["kaktus"], member["instance_id"])
    return {"id": gw.id, "ipsec_id": ipsec.id, "doc": doc, "vm": appliance}


def test_a_kawaii_appliance_sees_its_ipsec_psk_and_nobody_else_does(kahuna, world, kawaii):
    vm, doc = kawaii["vm"], kawaii["doc"]
    assert vm["doc"]["profile"] == "kawaii" and vm["doc"]["profile_id"] == kawaii["id"]
    body = read(kahuna, vm)
    assert set(body) == set(BASE_FIELDS) | {"kawaii"}
    check_types(body, BASE_TYPES)
    gw = body["kawaii"]
    assert set(gw) == set(KAWAII_FIELDS) and all(isinstance(gw[k], list) for k in KAWAII_LISTS)
    (ipsec,) = gw["ipsec_connections"]
    assert set(ipsec) == set(IPSEC_FIELDS) and isinstance(ipsec["xfrm_id"], int)
    assert (ipsec["name"], ipsec["pre_shared_key"], ipsec["remote_peer"], ipsec["remote_subnet"]) == (
        "to-hq", PSK, "203.0.113.7", "10.200.0.0/16")
    assert (ipsec["phase1_df_group"], ipsec["phase2_df_group"], ipsec["xfrm_id"]) == ("modp2048", "ecp256", 1)
    assert ipsec["ip"] in gw["public_vip_addresses"]
    assert ipsec["ingress_rules"] == [{"source_ip": "10.200.0.0/16", "direction": "in", "protocol": "tcp",
                                       "ports": "443", "action": "accept"}]
    # VIPs: the zone's public VIP and the project's zone gateway, one VRRP id, master in its own zone
    public_vips = doc["public_vips"]
    assert gw["public_vip_addresses"] == public_vips and all(v.startswith("198.51.100.") for v in public_vips)
    assert gw["public_gw_address"] == "198.51.100.1"
    for v in gw["virtual_ips"]:
        assert set(v) == set(VIP_FIELDS)
        check_types(v, VIP_TYPES)
    vips = {(v["interface"], v["public"]): v for v in gw["virtual_ips"]}
    assert set(vips) == {("ens3", True), ("ens4", False)}
    assert vips["ens3", True]["vip"] == public_vips[0] and vips["ens3", True]["mask"] == 26
    assert vips["ens4", False]["mask"] == 26 and vips["ens4", False]["vip"].startswith("10.50.")
    assert vips["ens3", True]["vrrp_id"] == vips["ens4", False]["vrrp_id"] >= 1
    assert {v["priority"] for v in gw["virtual_ips"]} == {150}
    assert gw["fw_input_rules"] == [{"iifname": "ens3", "oifname": "ens3", "source_ip": "0.0.0.0/0",
                                     "destination_ip": public_vips[0], "protocol": "tcp", "ports": "22",
                                     "action": "accept"}]
    assert gw["fw_nat_rules"] == [{"private_ip": world["alpha"]["ip"], "public_ip": public_vips[0],
                                   "protocol": "tcp", "ports": "8080"}]
    assert all(set(r) == set(NAT_FIELDS) for r in gw["fw_nat_rules"])
    assert gw["fw_input_extra_networks"] == ["10.60.0.0/16"] and gw["fw_output_default"] == "accept"
    assert body["peers"] == []  # the only appliance of its Kawaii
    # its Kontroller credentials are on its ISO, never in the JSON
    assert vm["meta"]["kowabunga_controller_agent_token"] not in json.dumps(body)
    # nobody else sees the PSK, the VRRP data or the appliance part
    vrrp = str(vips["ens3", True]["vrrp_id"])
    for who in ("alpha", "beta", "gamma"):
        raw = json.dumps(read(kahuna, world[who]))
        assert PSK not in raw and "kawaii" not in json.loads(raw) and "vrrp" not in raw
        assert vrrp not in json.loads(raw)["peers"]


def test_an_instance_behind_its_kawaii_uses_upstreams_headers(kahuna, world, kawaii):
    """The NAT an instance egresses through: the Kawaii's public VIP is a valid source for its
    project's ordinary instances, not for another project's, nor for an appliance."""
    nat = kawaii["doc"]["public_vips"][0]
    status, body, _ = get(conn(kahuna, PROXY), by_source(world["beta"], nat))
    assert status == 200 and body["instance-id"] == world["beta"]["id"]
    assert get(conn(kahuna, PROXY), by_source(world["gamma"], nat))[0] == 403
    # behind the NAT all of p1 looks alike: not enough for the appliance's own profile (its PSKs)
    assert get(conn(kahuna, PROXY), by_source(kawaii["vm"], nat))[0] == 403
    status, body, _ = get(conn(kahuna, PROXY), by_source(kawaii["vm"], kawaii["vm"]["ip"]))
    assert status == 200 and body["kawaii"]["ipsec_connections"][0]["pre_shared_key"] == PSK


def test_the_kontroller_configures_from_its_profile_and_follows_a_rule_change(kahuna, world, kawaii, host, admin):
    vm = kawaii["vm"]
    kontroller = host.kontroller(world["kaktus"], POOL, vm["doc"]["iso_volume"],
                                 endpoint=f"ws://127.0.0.1:{kahuna.hub_port}/ws", metadata_url=kahuna.url + PATH)
    try:
        state = kontroller.wait_reloads(1)  # Kahuna reloads a Kontroller when it connects
        assert state["kind"] == "kawaii" and state["ipsec"][0]["pre_shared_key"] == PSK
        assert state["requests"][0]["X-Kowabunga-Instance-Token"] == "<set>"
        kowabunga.KawaiiApi(admin).update_kawaii(kawaii["id"], kowabunga.KawaiiUpdate(firewall=kowabunga.KawaiiFirewall(
            ingress=[kowabunga.KawaiiFirewallIngressRule(source="192.0.2.0/24", protocol="udp", ports="51820")],
            egress_policy="drop", egress=[kowabunga.KawaiiFirewallEgressRule(destination="0.0.0.0/0", protocol="tcp",
                                                                              ports="443")])))
        state = kontroller.wait_reloads(2)
        rules = state["firewall"]["input_rules"]
        assert [(r["source_ip"], r["protocol"], r["ports"]) for r in rules] == [("192.0.2.0/24", "udp", "51820")]
        assert state["firewall"]["output_default"] == "drop"
        assert [(r["destination_ip"], r["ports"], r["action"]) for r in state["firewall"]["output_rules"]] == [
            ("0.0.0.0/0", "443", "accept")]
        assert read(kahuna, vm)["kawaii"]["fw_input_rules"] == rules
    finally:
        kontroller.stop()


def test_a_konvey_appliance_profile(kahuna, world, admin):
    alpha, beta = world["alpha"], world["beta"]
    lb = kowabunga.ProjectApi(admin).create_project_region_konvey(world["p1"].id, world["region"], kowabunga.Konvey(
        name="web", failover=False, endpoints=[kowabunga.KonveyEndpoint(
            name="https", port=443, protocol="tcp",
            backends=kowabunga.KonveyBackends(hosts=[alpha["ip"], beta["ip"]], port=8443))]))
    doc = stored(kahuna, "konvey", lb.id)
    (member,) = doc["appliances"]
    vm = instance_facts(kahuna, world["kaktus"], member["instance_id"])
    body = read(kahuna, vm)
    assert set(body) == set(BASE_FIELDS) | {"konvey"} and set(body["konvey"]) == set(KONVEY_FIELDS)
    konvey = body["konvey"]
    assert konvey["virtual_ips"] == [{"vrrp_id": doc["vrrp_id"], "interface": "ens4", "vip": doc["vip"],
                                      "priority": 150, "mask": 26, "public": False}]
    assert doc["vip"].startswith("10.50.") and doc["vip"] == lb.vip and doc["vrrp_id"] >= 1
    assert konvey["endpoints"] == [{"name": "https", "port": 443, "protocol": "tcp", "backends": [
        {"host": alpha["ip"], "port": 8443}, {"host": beta["ip"], "port": 8443}]}]
    assert "konvey" not in read(kahuna, alpha) and "kawaii" not in body
    # a backend removed through the API is gone at the next read
    kowabunga.KonveyApi(admin).update_konvey(lb.id, kowabunga.KonveyUpdate(endpoints=[kowabunga.KonveyEndpoint(
        name="https", port=443, protocol="tcp", backends=kowabunga.KonveyBackends(hosts=[beta["ip"]], port=8443))]))
    assert read(kahuna, vm)["konvey"]["endpoints"][0]["backends"] == [{"host": beta["ip"], "port": 8443}]


def test_no_token_or_psk_in_the_daemon_log(kahuna, world, kawaii):
    """Last: everything above has been logged by then."""
    logs = kahuna.new_stderr() + kahuna.stdout()
    assert "/latest/meta-data" in logs and "kompute created" in logs  # the log has the traffic
    for vm in (world["alpha"], world["beta"], world["gamma"], kawaii["vm"]):
        assert vm["token"] not in logs
    assert PSK not in logs and kawaii["vm"]["meta"]["kowabunga_controller_agent_token"] not in logs
