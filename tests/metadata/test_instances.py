"""Instance metadata end to end (issue 10): Komputes and appliances created through the official
client against a real Kahuna and in-process simulated Kaktus agents (two zones); each instance's
token is read back from the cloud-init `meta-data` of the ISO the Kaktus was given, then the
profile is read over real HTTP the way the instance would (and by a simulated Kontroller).

The instances' private addresses are RFC 1918 (the project subnets are 10.70.x.0/24), which a
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
from tests.identity.helpers import PUBLIC_URL, identity_config
from tests.infra.helpers import CALL_TIMEOUT, stored, unique
from tests.kahuna_proc import Kahuna
from tests.metadata.helpers import BASE_TYPES, KAWAII_LISTS, PATH, VIP_TYPES, check_types, conn, get
from tests.services.appliance_world import POOL, build

PROXY, UNTRUSTED = "127.0.0.1", "127.0.0.3"
PSK = "psk-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    work = tmp_path_factory.mktemp("kahuna-metadata-e2e")
    # DEBUG: the secrets test greps every line the daemon writes, request lines included
    config = identity_config(work, smtp_sink, logLevel="DEBUG", http={"trustedProxies": [PROXY]},
                             ws={"callTimeout": CALL_TIMEOUT})
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


@pytest.fixture(scope="module")
def host():
    with SimHost() as h:
        yield h


def booted(kahuna, world, kompute_id: str) -> dict:
    """What the instance of a Kompute knows from its CD-ROM: meta-data, and its document."""
    return instance_facts(kahuna, world, stored(kahuna, "kompute", kompute_id)["instance_id"])


def instance_facts(kahuna, world, instance_id: str) -> dict:
    instance = {**stored(kahuna, "instance", instance_id), "_id": instance_id}
    files = world["kaktus"][0].iso_files(POOL, instance["iso_volume"])  # the pool's Kaktus keeps the ISOs
    meta = yaml.safe_load(files["meta-data"])
    return {"id": meta["instance-id"], "token": meta["kowabunga_metadata_token"], "ip": meta["kowabunga_local_ip"],
            "meta": meta, "files": files, "doc": instance, "name": instance["name"]}


@pytest.fixture(scope="module")
def world(kahuna, admin, smtp_sink, host):
    """The appliance tests' world (a region with two zones, a simulated Kaktus in each, private and
    public VNets: tests.services.appliance_world) plus project p1 with a domain and tags on a
    third private subnet; p2 is that world's `other` project. Komputes alpha and beta in p1
    (zone 1), gamma in p2 (zone 2)."""
    out = build(kahuna, admin, smtp_sink, host)
    region = out["region"]
    regions, projects = kowabunga.RegionApi(admin), kowabunga.ProjectApi(admin)
    (private,) = [v for v in regions.list_region_v_nets(region) if kowabunga.VnetApi(admin).read_v_net(v).private]
    subnet = kowabunga.VnetApi(admin).create_v_net_subnet(private, kowabunga.Subnet(
        name=unique("vpc"), cidr="10.70.3.0/24", gateway="10.70.3.1", extra_routes=["10.60.0.0/16"],
        gw_pool=[kowabunga.IpRange(first="10.70.3.2", last="10.70.3.4")]))
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[]))
    p1 = projects.create_project(kowabunga.Project(name=unique("p1"), domain="p1.acme.test", tags=["web"],
                                                   teams=[team.id], regions=[region]))
    p2 = projects.read_project(out["other"])
    assert stored(kahuna, "project", p1.id)["private_subnets"] == {region: subnet.id}

    def kompute(project, zone, name):
        vm = projects.create_project_zone_kompute(project.id, zone, kowabunga.Kompute(
            name=unique(name), description=f"{name} desc", memory=2 * GiB, vcpus=2, disk=4 * GiB))
        return {**booted(kahuna, out, vm.id), "kompute_id": vm.id}

    zone1, zone2 = out["zones"]
    return {**out, "zone": zone1, "p1": p1, "p2": p2, "subnet": subnet.cidr,
            "kaktus_name": kowabunga.KaktusApi(admin).read_kaktus(out["nodes"][0]).name,
            "alpha": kompute(p1, zone1, "alpha"), "beta": kompute(p1, zone1, "beta"),
            "gamma": kompute(p2, zone2, "gamma")}


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
    assert meta["kowabunga_metadata_uri"] == PUBLIC_URL + PATH  # global.publicUrl
    assert meta["instance-id"] == alpha["doc"]["_id"] and meta["kowabunga_local_ip"] == alpha["doc"]["local_ip"]
    assert alpha["ip"].startswith("10.70.3.") and len(alpha["token"]) == 43
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
    assert body == {
        "instance-id": alpha["id"], "local-hostname": alpha["name"], "description": "alpha desc",
        "kaktus": world["kaktus_name"], "vcpu": 2, "mem_gb": 2, "local-ipv4": alpha["ip"],
        "subnet_cidr": "10.70.3.0/24", "template": "appliance", "monthly_cost": body["monthly_cost"],
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
    # the monthly cost follows the hosts' prices (gamma is p2's only instance, storage is free here)
    gamma = world["gamma"]
    assert read(kahuna, gamma)["monthly_cost"] == f"{0.0:f} EUR"
    kaktus = kowabunga.KaktusApi(admin)
    node = kaktus.read_kaktus(world["nodes"][1])
    kaktus.update_kaktus(node.id, kowabunga.KaktusUpdate(
        name=node.name, agents=node.agents, cpu_cost=kowabunga.Cost(price=640, currency="CHF"),
        memory_cost=kowabunga.Cost(price=0, currency="CHF")))
    cost = projects.read_project_cost(world["p2"].id)
    assert cost.price > 0 and read(kahuna, gamma)["monthly_cost"] == f"{cost.price:f} CHF"


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
    vms = {m["zone_id"]: instance_facts(kahuna, world, m["instance_id"]) for m in doc["appliances"]}
    assert set(vms) == set(world["zones"])
    return {"id": gw.id, "ipsec_id": ipsec.id, "doc": doc, "vm": vms[world["zones"][0]],
            "other_vm": vms[world["zones"][1]]}


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
    # per zone: its public VIP (ens3) and the project's zone gateway (ens4) sharing one VRRP id;
    # master (150) for its own zone's, backup (100) for the other zone's; the other appliance the reverse
    public_vips = doc["public_vips"]
    assert len(public_vips) == 2 and gw["public_vip_addresses"] == public_vips
    assert all(v.startswith("198.51.100.") for v in public_vips) and gw["public_gw_address"] == "198.51.100.1"
    for v in gw["virtual_ips"]:
        assert set(v) == set(VIP_FIELDS)
        check_types(v, VIP_TYPES)
    gateways = stored(kahuna, "project", world["p1"].id)["zone_gateways"]
    own, other = world["zones"]
    expected = [{"vrrp_id": v["vrrp_id"], "interface": v["interface"], "vip": v["vip"],
                 "priority": 150 if v["zone_id"] == own else 100, "mask": 27 if v["public"] else 24,
                 "public": v["public"]} for v in doc["virtual_ips"]]
    assert gw["virtual_ips"] == expected and len(expected) == 4
    assert {(v["vip"], v["interface"]) for v in gw["virtual_ips"] if not v["public"]} == {
        (gateways[own], "ens4"), (gateways[other], "ens4")}
    assert len({v["vrrp_id"] for v in gw["virtual_ips"]}) == 2 and all(v["vrrp_id"] >= 1 for v in gw["virtual_ips"])
    backup = read(kahuna, kawaii["other_vm"])
    assert [v["priority"] for v in backup["kawaii"]["virtual_ips"]] == [250 - v["priority"] for v in expected]
    assert body["peers"] == [kawaii["other_vm"]["ip"]] and backup["peers"] == [vm["ip"]]
    assert backup["kawaii"]["ipsec_connections"][0]["pre_shared_key"] == PSK  # both ends of the pair
    assert gw["fw_input_rules"] == [{"iifname": "ens3", "oifname": "ens3", "source_ip": "0.0.0.0/0",
                                     "destination_ip": address, "protocol": "tcp", "ports": "22",
                                     "action": "accept"} for address in public_vips]
    assert gw["fw_nat_rules"] == [{"private_ip": world["alpha"]["ip"], "public_ip": address,
                                   "protocol": "tcp", "ports": "8080"} for address in public_vips]
    assert all(set(r) == set(NAT_FIELDS) for r in gw["fw_nat_rules"])
    assert gw["fw_input_extra_networks"] == ["10.60.0.0/16"] and gw["fw_output_default"] == "accept"
    # its Kontroller credentials are on its ISO, never in the JSON
    assert vm["meta"]["kowabunga_controller_agent_token"] not in json.dumps(body)
    # nobody else sees the PSK, the VRRP data or the appliance part
    for who in ("alpha", "beta", "gamma"):
        profile = read(kahuna, world[who])
        raw = json.dumps(profile)
        assert PSK not in raw and "kawaii" not in profile and "vrrp" not in raw and profile["peers"] == []


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
    kontroller = host.kontroller(world["kaktus"][0], POOL, vm["doc"]["iso_volume"],
                                 endpoint=f"ws://127.0.0.1:{kahuna.hub_port}/ws", metadata_url=kahuna.url + PATH)
    try:
        state = kontroller.wait_reloads(1)  # Kahuna reloads a Kontroller when it connects
        assert state["kind"] == "kawaii" and state["ipsec"][0]["pre_shared_key"] == PSK
        assert state["requests"][0]["X-Kowabunga-Instance-Token"] == "<set>"
        kowabunga.KawaiiApi(admin).update_kawaii(kawaii["id"], kowabunga.KawaiiUpdate(firewall=kowabunga.KawaiiFirewall(
            ingress=[kowabunga.KawaiiFirewallIngressRule(source="192.0.2.0/24", protocol="udp", ports="51820")],
            egress_policy="drop", egress=[kowabunga.KawaiiFirewallEgressRule(destination="0.0.0.0/0", protocol="tcp",
                                                                              ports="443")])))
        state = kontroller.wait_reloads(state["reloads"] + 1)  # Kahuna reloads it after the update
        rules = state["firewall"]["input_rules"]
        vips = kawaii["doc"]["public_vips"]
        assert [(r["source_ip"], r["destination_ip"], r["protocol"], r["ports"]) for r in rules] == [
            ("192.0.2.0/24", address, "udp", "51820") for address in vips]
        assert state["firewall"]["output_default"] == "drop"
        assert [(r["destination_ip"], r["ports"], r["action"]) for r in state["firewall"]["output_rules"]] == [
            ("0.0.0.0/0", "443", "accept")] * len(vips)
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
    vm = instance_facts(kahuna, world, member["instance_id"])
    body = read(kahuna, vm)
    assert set(body) == set(BASE_FIELDS) | {"konvey"} and set(body["konvey"]) == set(KONVEY_FIELDS)
    konvey = body["konvey"]
    assert konvey["virtual_ips"] == [{"vrrp_id": doc["vrrp_id"], "interface": "ens4", "vip": doc["vip"],
                                      "priority": 150, "mask": 24, "public": False}]
    assert doc["vip"].startswith("10.70.3.") and doc["vip"] == lb.vip and doc["vrrp_id"] >= 1
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
