"""Virtual networks, subnets and adapters through the official client: validated as networks,
addresses assigned lowest-free and concurrency-safe, MAC addresses generated and checked."""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, BadRequestException, ConflictException, NotFoundException

from tests.conftest import make_client
from tests.infra.helpers import http, region_and_zone, stored, unique


@pytest.fixture(scope="module")
def region(admin):
    return region_and_zone(admin)[0]


def vnet(admin, region: str, **kw) -> kowabunga.VNet:
    return kowabunga.RegionApi(admin).create_region_v_net(region, kowabunga.VNet(
        name=unique("vnet"), interface=kw.pop("interface", "br0"), **kw))


def subnet(admin, vnet_id: str, cidr: str, gateway: str, **kw) -> kowabunga.Subnet:
    return kowabunga.VnetApi(admin).create_v_net_subnet(vnet_id, kowabunga.Subnet(
        name=unique("subnet"), cidr=cidr, gateway=gateway, **kw))


def test_vnet_crud_and_defaults(admin, kahuna, region):
    regions, vnets = kowabunga.RegionApi(admin), kowabunga.VnetApi(admin)
    v = vnet(admin, region)
    assert (v.vlan, v.private, v.interface) == (0, True, "br0")
    assert stored(kahuna, "vnet", v.id)["vlan_id"] == 0
    assert v.id in regions.list_region_v_nets(region) and v.id in vnets.list_v_nets()
    v = vnets.update_v_net(v.id, kowabunga.VNetUpdate(vlan=4094, interface="br100"))
    assert v.vlan == 4094 and v.interface == "br100"
    # `private` is set at creation only (ignored on updates), VLAN ids are 0-4094
    status, body = http(kahuna, "PUT", f"/vnet/{v.id}", {"private": False})
    assert status == 200 and body["private"] is True
    for bad in ({"vlan": 4095}, {"vlan": -1}, {"vlan": "7"}, {"interface": "has space"}, {"interface": "x" * 16}):
        status, body = http(kahuna, "PUT", f"/vnet/{v.id}", bad)
        assert status == 400, (bad, body)
    status, body = http(kahuna, "POST", f"/region/{region}/vnet", {"name": unique("v")})
    assert status == 422 and "interface" in body["reason"]
    vnets.delete_v_net(v.id)
    with pytest.raises(NotFoundException):
        vnets.read_v_net(v.id)


def test_subnets_are_validated_as_networks(admin, kahuna, region):
    v = vnet(admin, region)
    s = subnet(admin, v.id, "10.20.0.0/24", "10.20.0.1", reserved=[kowabunga.IpRange(first="10.20.0.2", last="10.20.0.9")],
               gw_pool=[kowabunga.IpRange(first="10.20.0.250", last="10.20.0.252")], extra_routes=["10.30.0.0/16"])
    assert (s.dns, s.application, s.extra_routes) == ("10.20.0.1", "user", ["10.30.0.0/16"])
    assert s.reserved == [kowabunga.IpRange(first="10.20.0.2", last="10.20.0.9")]
    doc = stored(kahuna, "subnet", s.id)
    assert doc["vnet_id"] == v.id and doc["routes"] == ["10.30.0.0/16"] and doc["reserved_ranges"][0]["last"] == "10.20.0.9"
    assert doc["gw_pool"] == [{"first": "10.20.0.250", "last": "10.20.0.252"}]

    def refused(body: dict, status: int = 400, vnet_id: str = v.id) -> str:
        got, answer = http(kahuna, "POST", f"/vnet/{vnet_id}/subnet", {"name": unique("s"), **body})
        assert got == status, (body, answer)
        return answer["reason"]

    assert "outside" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.1.1"})
    assert "host bits" in refused({"cidr": "10.21.0.1/24", "gateway": "10.21.0.2"})
    assert "CIDR" in refused({"cidr": "10.21.0.0", "gateway": "10.21.0.1"})
    assert "network or broadcast" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.0.255"})
    assert "not inside" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.0.1",
                                    "reserved": [{"first": "10.21.0.10", "last": "10.21.1.5"}]})
    assert "after last" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.0.1",
                                    "reserved": [{"first": "10.21.0.10", "last": "10.21.0.5"}]})
    assert "overlaps" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.0.1",
                                  "reserved": [{"first": "10.21.0.10", "last": "10.21.0.20"}],
                                  "gw_pool": [{"first": "10.21.0.20", "last": "10.21.0.22"}]})
    assert "RFC 1918" in refused({"cidr": "8.8.8.0/24", "gateway": "8.8.8.1"})
    assert "extra_routes" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.0.1", "extra_routes": ["10.0.0.1/8"]})
    assert "application" in refused({"cidr": "10.21.0.0/24", "gateway": "10.21.0.1", "application": "web"})
    # no two subnets of a region overlap, whichever vnet they are in
    other = vnet(admin, region, interface="br1")
    assert "overlaps subnet" in refused({"cidr": "10.20.0.128/25", "gateway": "10.20.0.129"}, 409, other.id)
    assert "overlaps subnet" in refused({"cidr": "10.0.0.0/8", "gateway": "10.0.0.1"}, 409, other.id)
    # a public vnet takes public subnets only
    public = vnet(admin, region, interface="br2", private=False)
    assert "private network" in refused({"cidr": "192.168.7.0/24", "gateway": "192.168.7.1"}, 400, public.id)
    p = subnet(admin, public.id, "203.0.113.0/28", "203.0.113.1", dns="9.9.9.9", application="ceph")
    assert p.dns == "9.9.9.9" and p.application == "ceph"
    # another region may reuse the range
    other_region = region_and_zone(admin)[0]
    subnet(admin, vnet(admin, other_region).id, "10.20.0.0/24", "10.20.0.1")

    # updates: cidr is set at creation only; the gateway stays inside it
    s2 = kowabunga.SubnetApi(admin).update_subnet(s.id, kowabunga.SubnetUpdate(gateway="10.20.0.254", dns="1.1.1.1"))
    assert (s2.gateway, s2.dns, s2.cidr) == ("10.20.0.254", "1.1.1.1", "10.20.0.0/24")
    status, body = http(kahuna, "PUT", f"/subnet/{s.id}", {"cidr": "10.99.0.0/24"})
    assert status == 200 and body["cidr"] == "10.20.0.0/24"
    status, body = http(kahuna, "PUT", f"/subnet/{s.id}", {"gateway": "10.20.1.1"})
    assert status == 400 and "outside" in body["reason"]


def test_gateway_pool_needs_one_address_per_zone(admin, kahuna):
    region, _ = region_and_zone(admin)
    kowabunga.RegionApi(admin).create_region_zone(region, kowabunga.Zone(name=unique("zone")))
    v = vnet(admin, region)
    status, body = http(kahuna, "POST", f"/vnet/{v.id}/subnet", {
        "name": unique("s"), "cidr": "10.40.0.0/24", "gateway": "10.40.0.1",
        "gw_pool": [{"first": "10.40.0.250", "last": "10.40.0.250"}]})
    assert status == 400 and "2 zones" in body["reason"]


def test_default_subnet_per_vnet(admin, kahuna, region):
    vnets, subnets = kowabunga.VnetApi(admin), kowabunga.SubnetApi(admin)
    v = vnet(admin, region, interface="br3")
    a = subnet(admin, v.id, "10.50.0.0/24", "10.50.0.1")
    b = subnet(admin, v.id, "10.50.1.0/24", "10.50.1.1")
    assert set(vnets.list_v_net_subnets(v.id)) == {a.id, b.id}
    assert stored(kahuna, "vnet", v.id)["defaults"]["subnet_id"] == a.id
    assert vnets.set_v_net_default_subnet(v.id, b.id) is None
    assert stored(kahuna, "vnet", v.id)["defaults"]["subnet_id"] == b.id
    with pytest.raises(NotFoundException):
        vnets.set_v_net_default_subnet(v.id, "0" * 24)
    with pytest.raises(ConflictException) as err:
        vnets.delete_v_net(v.id)
    assert "2 subnets" in err.value.body
    subnets.delete_subnet(b.id)
    assert stored(kahuna, "vnet", v.id)["defaults"]["subnet_id"] == a.id
    assert a.id in subnets.list_subnets()


def test_adapters_addresses_and_macs(admin, kahuna, region):
    subnets, adapters = kowabunga.SubnetApi(admin), kowabunga.AdapterApi(admin)
    v = vnet(admin, region, interface="br4")
    s = subnet(admin, v.id, "10.60.0.0/24", "10.60.0.1",
               reserved=[kowabunga.IpRange(first="10.60.0.2", last="10.60.0.4")],
               gw_pool=[kowabunga.IpRange(first="10.60.0.5", last="10.60.0.5")])
    # the lowest free address: not network, gateway, reserved or gateway pool
    a = subnets.create_subnet_adapter(s.id, kowabunga.Adapter(name=unique("nic")), assign_ip=True)
    assert a.addresses == ["10.60.0.6"] and a.reserved is False
    mac = a.mac
    assert mac.startswith("da:1e:70:") and len(mac) == 17
    assert stored(kahuna, "adapter", a.id)["subnet_id"] == s.id
    # without assignIP, no address; explicit addresses are checked
    b = subnets.create_subnet_adapter(s.id, kowabunga.Adapter(name=unique("nic")))
    assert b.addresses == [] and b.mac != mac
    c = subnets.create_subnet_adapter(s.id, kowabunga.Adapter(name=unique("nic"), addresses=["10.60.0.1"],
                                                              mac="52:54:00:AA:BB:CC"))
    assert c.addresses == ["10.60.0.1"] and c.mac == "52:54:00:aa:bb:cc"  # a router holds the gateway
    assert subnets.create_subnet_adapter(s.id, kowabunga.Adapter(name=unique("nic")), assign_ip=True).addresses == ["10.60.0.7"]
    adapters.delete_adapter(a.id)  # its address is free again, and the lowest
    assert subnets.create_subnet_adapter(s.id, kowabunga.Adapter(name=unique("nic")), assign_ip=True).addresses == ["10.60.0.6"]

    def refused(body: dict, status: int, query: str = "") -> str:
        got, answer = http(kahuna, "POST", f"/subnet/{s.id}/adapter{query}", {"name": unique("nic"), **body})
        assert got == status, (body, answer)
        return answer["reason"]

    assert "already assigned" in refused({"addresses": ["10.60.0.7"]}, 409)
    assert "not part of subnet" in refused({"addresses": ["10.61.0.7"]}, 400)
    assert "network or broadcast" in refused({"addresses": ["10.60.0.255"]}, 400)
    assert "listed twice" in refused({"addresses": ["10.60.0.90", "10.60.0.90"]}, 400)
    assert "IPv4" in refused({"addresses": ["fe80::1"]}, 400)
    assert "assignIP" in refused({}, 400, "?assignIP=maybe")
    # duplicate MAC: refused (409) unless both adapters are reserved
    assert "already the address" in refused({"mac": "52:54:00:aa:bb:cc"}, 409)
    assert "already the address" in refused({"mac": b.mac.upper()}, 409)
    assert "MAC" in refused({"mac": "52:54:00:aa:bb"}, 400)
    assert "multicast" in refused({"mac": "01:00:5e:00:00:01"}, 400)
    r1 = subnets.create_subnet_adapter(s.id, kowabunga.Adapter(name=unique("rt"), mac="52:54:00:00:00:01", reserved=True))
    assert r1.reserved is True
    s_other = subnet(admin, vnet(admin, region, interface="br5").id, "10.61.0.0/24", "10.61.0.1")
    r2 = subnets.create_subnet_adapter(s_other.id, kowabunga.Adapter(name=unique("rt"), mac="52:54:00:00:00:01",
                                                                    reserved=True))
    assert r2.mac == r1.mac
    status, body = http(kahuna, "POST", f"/subnet/{s_other.id}/adapter", {"name": unique("x"), "mac": "52:54:00:00:00:01"})
    assert status == 409

    # updates are checked the same way
    updated = adapters.update_adapter(b.id, kowabunga.AdapterUpdate(addresses=["10.60.0.100"], description="eth1"))
    assert updated.addresses == ["10.60.0.100"] and updated.mac == b.mac
    with pytest.raises(ConflictException):
        adapters.update_adapter(b.id, kowabunga.AdapterUpdate(addresses=["10.60.0.6"]))
    with pytest.raises(ConflictException):
        adapters.update_adapter(b.id, kowabunga.AdapterUpdate(mac="52:54:00:aa:bb:cc"))
    with pytest.raises(BadRequestException):
        adapters.update_adapter(b.id, kowabunga.AdapterUpdate(addresses=["10.99.0.1"]))
    assert adapters.read_adapter(b.id).addresses == ["10.60.0.100"]
    assert len(subnets.list_subnet_adapters(s.id)) == 5 and b.id in adapters.list_adapters()

    # a subnet with adapters cannot be deleted
    with pytest.raises(ConflictException) as err:
        subnets.delete_subnet(s.id)
    assert "network adapters" in err.value.body


def test_exhaustion_is_507(admin, kahuna, region):
    s = subnet(admin, vnet(admin, region, interface="br6").id, "10.70.0.0/29", "10.70.0.1")
    api = kowabunga.SubnetApi(admin)
    got = [api.create_subnet_adapter(s.id, kowabunga.Adapter(name=f"nic{i}"), assign_ip=True).addresses[0]
           for i in range(5)]
    assert got == [f"10.70.0.{i}" for i in (2, 3, 4, 5, 6)]
    with pytest.raises(ApiException) as err:
        api.create_subnet_adapter(s.id, kowabunga.Adapter(name="nic5"), assign_ip=True)
    assert err.value.status == 507 and "no free address" in err.value.body
    assert len(api.list_subnet_adapters(s.id)) == 5


def test_fifty_parallel_creates_get_fifty_distinct_addresses(admin, kahuna, region):
    s = subnet(admin, vnet(admin, region, interface="br7").id, "10.80.0.0/24", "10.80.0.1")

    def create(i: int) -> list[str]:
        with make_client(kahuna) as client:
            return kowabunga.SubnetApi(client).create_subnet_adapter(
                s.id, kowabunga.Adapter(name=f"par-{i}"), assign_ip=True).addresses

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(create, range(50)))
    addresses = [r[0] for r in results]
    assert len(set(addresses)) == 50
    assert sorted(addresses, key=ipaddress.ip_address) == [f"10.80.0.{i}" for i in range(2, 52)]
    macs = {kowabunga.AdapterApi(admin).read_adapter(i).mac for i in kowabunga.SubnetApi(admin).list_subnet_adapters(s.id)}
    assert len(macs) == 50
