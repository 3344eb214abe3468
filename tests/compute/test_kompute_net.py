"""A Kompute's network, over real HTTP with the official client, an in-process simulated Kaktus
and Kiwi: the private adapter (its address is the Kompute's `ip` and the instance's local IP), the
public adapter (an address only when `public`), the NICs in the domain and in the cloud-init
network-config as the guest reads them from its ISO, the `name.<project domain>` A record on the
region's Kiwi, all of it gone after a delete or a failed create; the ISO refreshed when what it
carries changes; parallel creates that never overcommit a Kaktus nor share image names."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

import kowabunga
import pytest
import yaml

from agent.sim.model import GiB
from tests.infra.helpers import create_agents, http, stored, unique, wait_for


def _adapters(admin, subnet: str) -> dict[str, kowabunga.Adapter]:
    api = kowabunga.AdapterApi(admin)
    return {a.name: a for a in (api.read_adapter(i) for i in kowabunga.SubnetApi(admin).list_subnet_adapters(subnet))}


def _netplan(k, name: str) -> dict:
    return yaml.safe_load(k.iso_files("ssd", f"{name}-cloudinit")["network-config"])["ethernets"]


def _create(kahuna, project: str, zone: str, name: str, query: str = "", **extra):
    return http(kahuna, "POST", f"/project/{project}/zone/{zone}/kompute{query}",
                {"name": name, "memory": GiB, "vcpus": 1, "disk": 4 * GiB, **extra})


def test_private_and_public_nics_dns_and_network_config(kahuna, world, admin, corp, kiwi):
    k = world["kaktus"]
    vm = kowabunga.ProjectApi(admin).create_project_zone_kompute(corp["id"], world["zone"], kowabunga.Kompute(
        name="net1", memory=GiB, vcpus=1, disk=4 * GiB))
    subnet = kowabunga.SubnetApi(admin).read_subnet(corp["subnet"])
    net = ipaddress.ip_network(subnet.cidr)
    assert vm.ip and ipaddress.ip_address(vm.ip) in net and vm.ip != subnet.gateway
    instance = stored(kahuna, "instance", stored(kahuna, "kompute", vm.id)["instance_id"])
    assert instance["local_ip"] == vm.ip and instance["public_ip"] == ""
    private = _adapters(admin, corp["subnet"])["net1-private-adapter"]
    public = _adapters(admin, world["public"])["net1-public-adapter"]
    assert private.addresses == [vm.ip] and public.addresses == []  # a NIC, no public address
    assert instance["adapter_ids"] == [private.id, public.id]
    # the domain: public NIC first (ens3), then the private one, on their VNets' bridges
    assert [(n["mac"], n["bridge"]) for n in k.domain("net1")["nics"]] == [
        (public.mac, "br-pub"), (private.mac, "br-priv")]
    nics = _netplan(k, "net1")
    assert nics["ens3"]["match"]["macaddress"] == public.mac and "addresses" not in nics["ens3"]
    assert nics["ens4"]["match"]["macaddress"] == private.mac
    assert nics["ens4"]["addresses"] == [f"{vm.ip}/{net.prefixlen}"]
    assert nics["ens4"]["nameservers"]["search"] == ["corp.test"]
    gateway = (stored(kahuna, "project", corp["id"]).get("zone_gateways") or {}).get(world["zone"])
    if gateway:  # the project's gateway in this zone (reserved with its subnet) routes the private NIC
        assert {"to": "default", "via": gateway, "metric": 200} in nics["ens4"]["routes"]
    assert f'kowabunga_local_ip: "{vm.ip}"' in k.iso_files("ssd", "net1-cloudinit")["meta-data"]
    assert kiwi.resolve("net1.corp.test") == [vm.ip]
    kowabunga.KomputeApi(admin).delete_kompute(vm.id)
    assert kiwi.resolve("net1.corp.test") == []
    assert "net1-private-adapter" not in _adapters(admin, corp["subnet"])
    assert "net1-public-adapter" not in _adapters(admin, world["public"])
    again = _create(kahuna, corp["id"], world["zone"], "net2")[1]  # the address is free again
    assert again["ip"] == vm.ip
    assert http(kahuna, "DELETE", f"/kompute/{again['id']}")[0] == 200


def test_a_public_kompute_gets_a_public_address_and_its_default_route(kahuna, world, admin, corp, kiwi):
    status, body = _create(kahuna, corp["id"], world["zone"], "pub1", "?public=true")
    assert status == 201, body
    public = _adapters(admin, world["public"])["pub1-public-adapter"]
    assert public.addresses == ["198.51.100.2"]  # the lowest after the gateway
    assert stored(kahuna, "instance", stored(kahuna, "kompute", body["id"])["instance_id"])["public_ip"] == \
        "198.51.100.2"
    ens3 = _netplan(world["kaktus"], "pub1")["ens3"]
    assert ens3["addresses"] == ["198.51.100.2/24"]
    assert {"to": "default", "via": "198.51.100.1", "metric": 100} in ens3["routes"]
    assert http(kahuna, "DELETE", f"/kompute/{body['id']}")[0] == 200
    assert _adapters(admin, world["public"]) == {}


@pytest.mark.parametrize("method", ["CreateIsoVolume", "CreateInstance"])
def test_a_failed_create_leaves_no_adapter_address_nor_record(kahuna, world, admin, corp, kiwi, method):
    world["kaktus"].faults.fail(method, "rbd: ret=-5, Input/output error", times=1)
    status, body = _create(kahuna, corp["id"], world["zone"], "bad1", "?public=true")
    assert status == 502 and "Input/output error" in body["reason"], body
    assert _adapters(admin, corp["subnet"]) == {} and _adapters(admin, world["public"]) == {}
    assert kiwi.resolve("bad1.corp.test") == [] and kiwi.records().get("corp.test", {}) == {}
    assert http(kahuna, "GET", f"/project/{corp['id']}/usage")[1] == {
        "vcpus": 0, "memory": 0, "storage": 0, "instances": 0}


def test_the_iso_is_refreshed_when_what_it_carries_changes(kahuna, world, admin, corp):
    k = world["kaktus"]
    status, body = _create(kahuna, corp["id"], world["zone"], "iso1")
    assert status == 201, body
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl8TeStKeYrefreshed refresh@test"
    assert key not in k.iso_files("ssd", "iso1-cloudinit")["user-data"]
    updates = len(k.calls("UpdateIsoVolume"))
    kowabunga.ProjectApi(admin).update_project(corp["id"], kowabunga.ProjectUpdate(bootstrap_pubkey=key))
    kowabunga.KomputeApi(admin).update_kompute(body["id"], kowabunga.KomputeUpdate(description="refreshed"))
    assert key in k.iso_files("ssd", "iso1-cloudinit")["user-data"]
    assert len(k.calls("UpdateIsoVolume")) == updates + 1
    kowabunga.KomputeApi(admin).update_kompute(body["id"], kowabunga.KomputeUpdate(description="again"))
    assert len(k.calls("UpdateIsoVolume")) == updates + 1  # nothing changed in it: not re-uploaded
    assert http(kahuna, "DELETE", f"/kompute/{body['id']}")[0] == 200


def test_parallel_creates_never_overcommit_a_kaktus(kahuna, world, admin, corp):
    """Eight creates at once on a zone whose only Kaktus has room for three (6 GiB, ratio 1)."""
    zone = kowabunga.RegionApi(admin).create_region_zone(world["region"], kowabunga.Zone(name=unique("zone"))).id
    agent = create_agents(kahuna, "Kaktus")[0]
    small = world["host"].kaktus(agent["id"], agent["key"], f"ws://127.0.0.1:{kahuna.hub_port}/ws",
                                 node={"Memory": 6 * GiB, "Threads": 64}, libvirt_address="10.0.0.12")
    small.wait_connected()
    node = kowabunga.ZoneApi(admin).create_zone_kaktus(zone, kowabunga.Kaktus(
        name=unique("kaktus"), agents=[agent["id"]], overcommit_cpu_ratio=1, overcommit_memory_ratio=1,
        cpu_cost=kowabunga.Cost(price=0, currency="EUR"), memory_cost=kowabunga.Cost(price=0, currency="EUR")))
    wait_for(lambda: kowabunga.KaktusApi(admin).read_kaktus_caps(node.id).memory, "the small Kaktus's capabilities")
    world["kaktus"].faults.delay("CreateOsVolume", 0.3, times=8)  # every create in flight together
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _create(kahuna, corp["id"], zone, f"race{i}", memory=2 * GiB), range(8)))
    made = [b["id"] for s, b in results if s == 201]
    assert len(made) == 3 and {s for s, _ in results if s != 201} == {507}, results
    assert len(small.domains()) == 3
    assert stored(kahuna, "kaktus", node.id)["usage"] == {"instances": 3, "vcpus": 3, "memory": 6 * GiB}
    assert len(kowabunga.KaktusApi(admin).list_kaktus_instances(node.id)) == 3
    with ThreadPoolExecutor(3) as pool:
        assert all(s == 200 for s, _ in pool.map(lambda i: http(kahuna, "DELETE", f"/kompute/{i}"), made))
    assert stored(kahuna, "kaktus", node.id)["usage"] == {"instances": 0, "vcpus": 0, "memory": 0}
    kowabunga.KaktusApi(admin).enable_kaktus_maintenance(node.id)  # out of the other tests' way


def test_two_projects_cannot_make_komputes_of_one_name(kahuna, world, admin, corp):
    world["kaktus"].faults.delay("CreateOsVolume", 0.3, times=2)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: _create(kahuna, p, world["zone"], "twin"), [corp["id"], world["project"]]))
    assert sorted(s for s, _ in results) == [201, 409], results
    assert "twin" in next(b for s, b in results if s == 409)["reason"]
    made = next(b for s, b in results if s == 201)
    assert world["kaktus"].image("ssd", "twin-os") is not None
    assert http(kahuna, "DELETE", f"/kompute/{made['id']}")[0] == 200
    assert world["kaktus"].image("ssd", "twin-os") is None
