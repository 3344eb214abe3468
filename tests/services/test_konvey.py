"""Konvey load balancers over real HTTP with the official client, two simulated Kaktus (one per
zone) and the appliances' simulated Kontrollers booted from their ISOs: region level with
failover (two appliances in two zones), zone level (upstream's route always answered 409),
the private VIP and its VRRP id, endpoints reaching the appliances, update (endpoints and
description) -> Reload, delete leaving nothing, failures leaving nothing, access."""

from __future__ import annotations

import ipaddress

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, NotFoundException

from tests.conftest import make_client
from tests.infra.helpers import http, stored, wait_for
from tests.services.appliance_world import NOTHING, boot, closed, iso_meta, leftovers


@pytest.fixture(scope="module")
def kahuna(appliance_stack):
    return appliance_stack[0]


@pytest.fixture(scope="module")
def world(appliance_stack):
    return appliance_stack[1]


def endpoint(name="https", port=443, hosts=("10.70.1.10", "10.70.1.11"), backend_port=8443, protocol="tcp"):
    return kowabunga.KonveyEndpoint(name=name, port=port, protocol=protocol,
                                    backends=kowabunga.KonveyBackends(hosts=list(hosts), port=backend_port))


def test_region_konvey_with_failover(kahuna, world, admin):
    project, region = world["project"], world["region"]
    prefix = f"konvey-{world['project_name']}-web"
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects, konveys = kowabunga.ProjectApi(member), kowabunga.KonveyApi(member)
        lb = projects.create_project_region_konvey(project, region, kowabunga.Konvey(
            name="web", description="front", endpoints=[endpoint()]))
        assert (lb.name, lb.description, lb.failover) == ("web", "front", True)
        cidr = ipaddress.ip_network(stored(kahuna, "subnet", world["private_subnet"])["cidr"])
        assert ipaddress.ip_address(lb.vip) in cidr
        assert projects.list_project_region_konveys(project, region) == [lb.id]
        assert konveys.list_konveys() == [lb.id]
        with pytest.raises(ApiException) as err:
            projects.create_project_region_konvey(project, region, kowabunga.Konvey(name="web", endpoints=[endpoint()]))
        assert err.value.status == 409

        doc = stored(kahuna, "konvey", lb.id)
        assert stored(kahuna, "project", project)["reserved_vrrp_ids"] == [doc["vrrp_id"]]
        appliances = doc["appliances"]
        assert len(appliances) == 2
        assert {a["zone_id"] for a in appliances} == set(world["zones"])  # two zones, two hosts
        assert len({a["kaktus_id"] for a in appliances}) == 2
        for appliance in appliances:
            assert iso_meta(world, appliance["name"])["kowabunga_controller_agent_id"] == appliance["agent_id"]
            assert stored(kahuna, "instance", appliance["instance_id"])["profile"] == "konvey"

        sims = [boot(kahuna, world, a["name"]) for a in appliances]
        for state in [s.wait_reloads(1) for s in sims]:
            assert state["kind"] == "konvey"
            assert [(v["vip"], v["vrrp_id"], v["public"]) for v in state["vips"]] == [(lb.vip, doc["vrrp_id"], False)]
            assert state["endpoints"] == [{"name": "https", "port": 443, "protocol": "tcp", "backends": [
                {"host": "10.70.1.10", "port": 8443}, {"host": "10.70.1.11", "port": 8443}]}]

        # update: endpoints and description (upstream ignored the description) -> Reload
        updated = konveys.update_konvey(lb.id, kowabunga.KonveyUpdate(description="front2", endpoints=[
            endpoint("dns", 53, ("10.70.1.12",), 5353, "udp")]))
        assert updated.description == "front2" and updated.endpoints[0].name == "dns"
        for state in [s.wait_reloads(2) for s in sims]:
            assert state["endpoints"] == [{"name": "dns", "port": 53, "protocol": "udp",
                                           "backends": [{"host": "10.70.1.12", "port": 5353}]}]
        status, body = http(kahuna, "PUT", f"/konvey/{lb.id}", {"name": "renamed"})
        assert status == 400 and body["reason"].startswith("name"), body

        # the ISO rebuilt (an update of the appliance's Kompute): a fresh key in it, the old one refused
        first = appliances[0]
        before = iso_meta(world, first["name"])
        status, body = http(kahuna, "PUT", f"/kompute/{first['kompute_id']}", {"description": "re-rendered"})
        assert status == 200, body
        after = iso_meta(world, first["name"])
        assert after["kowabunga_controller_agent_id"] == first["agent_id"]
        assert after["kowabunga_controller_agent_token"] != before["kowabunga_controller_agent_token"]
        sims[0].wait_disconnected()
        sims[0].stop()
        sims[0] = boot(kahuna, world, first["name"])
        assert sims[0].wait_reloads(1)["endpoints"][0]["name"] == "dns"

        assert konveys.delete_konvey(lb.id) is None
        closed(sims)
        with pytest.raises(NotFoundException):
            konveys.read_konvey(lb.id)
    assert leftovers(kahuna, world, project, prefix) == NOTHING


def test_zone_konvey(kahuna, world, admin):
    project, zone = world["project"], world["zones"][0]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects = kowabunga.ProjectApi(member)
        lb = projects.create_project_zone_konvey(project, zone, kowabunga.Konvey(
            name="db", failover=False, endpoints=[endpoint("pg", 5432, ("10.70.1.30",), 5432)]))
        assert lb.failover is False
        doc = stored(kahuna, "konvey", lb.id)
        assert [a["zone_id"] for a in doc["appliances"]] == [zone] and doc["zone_id"] == zone
        assert projects.list_project_zone_konveys(project, zone) == [lb.id]
        assert projects.list_project_zone_konveys(project, world["zones"][1]) == []
        assert projects.list_project_region_konveys(project, world["region"]) == [lb.id]

        # a Reload the appliance fails is logged, not fatal: the update stands
        sim = boot(kahuna, world, doc["appliances"][0]["name"])
        try:
            sim.wait_reloads(1)
            sim.faults.fail("Reload", "keepalived: config test failed", times=1)
            updated = kowabunga.KonveyApi(member).update_konvey(lb.id, kowabunga.KonveyUpdate(
                endpoints=[endpoint("pg", 5433, ("10.70.1.30",), 5432)]))
            assert updated.endpoints[0].port == 5433
            wait_for(lambda: len(sim.calls("Reload")) == 2, "the failed Reload")
            assert sim.state()["reloads"] == 1
        finally:
            sim.stop()

        # failover in a zone with a single Kaktus: no second host, nothing left behind
        with pytest.raises(ApiException) as err:
            projects.create_project_zone_konvey(project, zone, kowabunga.Konvey(name="ha", endpoints=[endpoint()]))
        assert err.value.status in (503, 507), err.value.body
        assert leftovers(kahuna, world, project, f"konvey-{world['project_name']}-ha") == {**NOTHING, "vrrp": [doc["vrrp_id"]]}
        assert kowabunga.KonveyApi(member).delete_konvey(lb.id) is None
    assert leftovers(kahuna, world, project, "konvey-") == NOTHING


def test_bad_endpoints_are_refused_naming_the_field(kahuna, world):
    path = f"/project/{world['project']}/region/{world['region']}/konvey"
    ep = {"name": "a", "port": 80, "protocol": "tcp", "backends": {"hosts": ["10.70.1.5"], "port": 80}}
    for body, status, where in (
            ({"name": "x", "endpoints": [{**ep, "port": 0}]}, 400, "endpoints[0].port"),
            ({"name": "x", "endpoints": [{**ep, "protocol": "sctp"}]}, 400, "endpoints[0].protocol"),
            ({"name": "x", "endpoints": [{**ep, "backends": {"hosts": ["db.local"], "port": 80}}]}, 400,
             "endpoints[0].backends.hosts[0]"),
            ({"name": "x", "endpoints": [ep, {**ep, "port": 81}]}, 400, "endpoints[1].name"),
            ({"name": "x"}, 422, "endpoints")):
        code, answer = http(kahuna, "POST", path, body, key=None, token=world["member"])
        assert code == status and answer["reason"].startswith(where), answer
    assert leftovers(kahuna, world, world["project"], "konvey-") == NOTHING


def test_a_member_of_another_project_sees_nothing(kahuna, world):
    project, region = world["project"], world["region"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        lb = kowabunga.ProjectApi(member).create_project_region_konvey(project, region, kowabunga.Konvey(
            name="priv", failover=False, endpoints=[endpoint()]))
    try:
        with make_client(kahuna, api_key=None, token=world["outsider"]) as outsider:
            api = kowabunga.KonveyApi(outsider)
            assert api.list_konveys() == []
            for call in (lambda: api.read_konvey(lb.id), lambda: api.delete_konvey(lb.id),
                         lambda: api.update_konvey(lb.id, kowabunga.KonveyUpdate(description="x")),
                         lambda: kowabunga.ProjectApi(outsider).list_project_region_konveys(project, region),
                         lambda: kowabunga.ProjectApi(outsider).create_project_region_konvey(
                             project, region, kowabunga.Konvey(name="intruder", endpoints=[endpoint()]))):
                with pytest.raises(NotFoundException):
                    call()
    finally:
        with make_client(kahuna, api_key=None, token=world["member"]) as member:
            kowabunga.KonveyApi(member).delete_konvey(lb.id)
    assert leftovers(kahuna, world, project, "konvey-") == NOTHING
