"""Kaktus hypervisors and Kiwi gateways through the official client: CRUD, defaults and types,
agent lists, capabilities from a connected simulated agent, maintenance."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, BadRequestException, ConflictException, NotFoundException

from tests.infra.helpers import create_agents, http, region_and_zone, stored, unique, wait_for


@pytest.fixture(scope="module")
def agents(kahuna):
    return {"kaktus": create_agents(kahuna, "Kaktus", 3), "kiwi": create_agents(kahuna, "Kiwi", 1)}


def test_kaktus_crud_defaults_and_agent_checks(admin, kahuna, agents):
    zones, kaktuses = kowabunga.ZoneApi(admin), kowabunga.KaktusApi(admin)
    _, zone_id = region_and_zone(admin)
    ids = [agents["kaktus"][0]["id"]]
    k = zones.create_zone_kaktus(zone_id, kowabunga.Kaktus(name=unique("hv"), agents=ids))
    # upstream's defaults: over-commit 3 (CPU) and 2 (memory); zero costs; not in maintenance
    assert (k.overcommit_cpu_ratio, k.overcommit_memory_ratio, k.maintenance) == (3, 2, False)
    assert k.cpu_cost == kowabunga.Cost(price=0.0, currency="") and k.agents == ids
    assert k.id in zones.list_zone_kaktuses(zone_id) and k.id in kaktuses.list_kaktuses()
    doc = stored(kahuna, "kaktus", k.id)  # upstream's schema v2 names
    assert doc["zone_id"] == zone_id and doc["agent_ids"] == ids and doc["overcommit"] == {"cpu": 3, "memory": 2}

    updated = kaktuses.update_kaktus(k.id, kowabunga.KaktusUpdate(
        cpu_cost=kowabunga.Cost(price=100, currency="EUR"), overcommit_cpu_ratio=4,
        agents=ids + [agents["kaktus"][1]["id"]]))
    assert updated.cpu_cost.price == 100.0 and updated.cpu_cost.currency == "EUR"
    assert updated.overcommit_cpu_ratio == 4 and updated.overcommit_memory_ratio == 2
    assert updated.name == k.name and len(updated.agents) == 2
    assert stored(kahuna, "kaktus", k.id)["costs"]["cpu"] == {"price": 100.0, "currency": "EUR"}

    # read-only fields are ignored on input
    status, body = http(kahuna, "PUT", f"/kaktus/{k.id}", {"maintenance": True, "id": "x" * 24})
    assert status == 200 and body["maintenance"] is False and body["id"] == k.id

    # agents: required, existing, of the right type
    kiwi_agent = agents["kiwi"][0]
    for bad, words in ((["0" * 24], "not found"), ([kiwi_agent["id"]], "Kiwi agent"), ([], "at least one")):
        status, body = http(kahuna, "POST", f"/zone/{zone_id}/kaktus", {"name": unique("hv"), "agents": bad})
        assert status == 400 and words in body["reason"], body
    status, body = http(kahuna, "POST", f"/zone/{zone_id}/kaktus", {"name": unique("hv")})
    assert status == 422 and "agents" in body["reason"]
    status, body = http(kahuna, "POST", f"/zone/{zone_id}/kaktus",
                        {"name": unique("hv"), "agents": ids, "overcommit_cpu_ratio": 0})
    assert status == 400
    status, body = http(kahuna, "POST", f"/zone/{zone_id}/kaktus", {"name": k.name, "agents": ids})
    assert status == 409 and "already exists" in body["reason"]

    # a zone with a Kaktus cannot be deleted; the Kaktus can
    with pytest.raises(ConflictException) as err:
        kowabunga.ZoneApi(admin).delete_zone(zone_id)
    assert "1 Kaktus" in err.value.body
    assert kaktuses.list_kaktus_instances(k.id) == []
    kaktuses.delete_kaktus(k.id)
    with pytest.raises(NotFoundException):
        kaktuses.read_kaktus(k.id)
    kowabunga.ZoneApi(admin).delete_zone(zone_id)


def test_caps_before_and_after_the_agent_connects(admin, kahuna, agents, sims):
    _, zone_id = region_and_zone(admin)
    agent = agents["kaktus"][2]
    kaktuses = kowabunga.KaktusApi(admin)
    k = kowabunga.ZoneApi(admin).create_zone_kaktus(zone_id, kowabunga.Kaktus(name=unique("hv"), agents=[agent["id"]]))
    # before any connection: an all-zero object (documented), never a 404
    caps = kaktuses.read_kaktus_caps(k.id)
    assert caps.memory == 0 and caps.cpu.threads == 0 and caps.cpu.arch == ""

    sim = sims.start(kahuna, agent, sim={"node": {"Threads": 96, "Memory": 256 * 2**30, "Model": "EPYC-Genoa"}})
    sim.wait_connected()
    caps = wait_for(lambda: (c := kaktuses.read_kaktus_caps(k.id)).memory and c, "caps after connect")
    assert caps.cpu.threads == 96 and caps.cpu.model == "EPYC-Genoa" and caps.cpu.arch == "x86_64"
    assert caps.memory == 256 * 2**30 and caps.cpu.sockets == 2 and caps.cpu.vendor == "AMD"
    doc = stored(kahuna, "kaktus", k.id)
    assert doc["virtual_resources"]["vcpu"]["count"] == 96 * 3
    assert doc["virtual_resources"]["vmem_gb"]["count"] == 256 * 2

    # a Kaktus created while its agent is online has its caps at once
    k2 = kowabunga.ZoneApi(admin).create_zone_kaktus(zone_id, kowabunga.Kaktus(name=unique("hv"), agents=[agent["id"]]))
    assert kaktuses.read_kaktus_caps(k2.id).cpu.threads == 96

    # maintenance: PATCHes answer null; the flag is read-only elsewhere
    assert kaktuses.enable_kaktus_maintenance(k.id) is None
    assert kaktuses.read_kaktus(k.id).maintenance is True
    assert stored(kahuna, "kaktus", k.id)["maintenance"] is True
    kaktuses.disable_kaktus_maintenance(k.id)
    assert kaktuses.read_kaktus(k.id).maintenance is False
    with pytest.raises(NotFoundException):
        kaktuses.enable_kaktus_maintenance("0" * 24)
    with pytest.raises(NotFoundException):
        kaktuses.read_kaktus_caps("0" * 24)


def test_kiwi_crud(admin, kahuna, agents):
    regions, kiwis = kowabunga.RegionApi(admin), kowabunga.KiwiApi(admin)
    region_id, _ = region_and_zone(admin)
    kiwi = regions.create_region_kiwi(region_id, kowabunga.Kiwi(name=unique("kiwi")))
    assert kiwi.agents == [] and kiwi.id in regions.list_region_kiwis(region_id) and kiwi.id in kiwis.list_kiwis()
    agent_id = agents["kiwi"][0]["id"]
    kiwi = kiwis.update_kiwi(kiwi.id, kowabunga.KiwiUpdate(agents=[agent_id, agent_id], description="edge"))
    assert kiwi.agents == [agent_id] and kiwi.description == "edge"
    with pytest.raises(BadRequestException):
        kiwis.update_kiwi(kiwi.id, kowabunga.KiwiUpdate(agents=[agents["kaktus"][0]["id"]]))
    with pytest.raises(ConflictException):
        regions.delete_region(region_id)
    kiwis.delete_kiwi(kiwi.id)
    with pytest.raises(NotFoundException):
        kiwis.read_kiwi(kiwi.id)


def test_unknown_ids_and_unauthenticated(kahuna):
    for path in ("/kaktus/" + "0" * 24, "/kiwi/" + "0" * 24, "/kaktus/xyz/caps"):
        status, body = http(kahuna, "GET", path)
        assert status == 404, (path, body)
    status, _ = http(kahuna, "GET", "/kaktus", key=None)
    assert status == 401
    status, _ = http(kahuna, "GET", "/kaktus", key="wrong")
    assert status == 401


def test_client_exception_carries_the_reason(admin):
    with pytest.raises(ApiException) as err:
        kowabunga.KaktusApi(admin).read_kaktus("0" * 24)
    assert err.value.status == 404 and "not found" in err.value.body
