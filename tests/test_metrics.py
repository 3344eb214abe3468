"""GET /metrics (issue 13): the series are there under their names, and they move with what the
daemon does — HTTP requests counted under their route template (never an id), a created or
deleted object's kowabunga_* series appearing and disappearing, an agent session gauge going up
and down, an agent call counted, store operations and the mail outbox. Values, not timings.
One daemon for the module (the suite's `kahuna` and `admin` fixtures)."""

from __future__ import annotations

import time

import kowabunga
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from tests.infra.helpers import SimAgent, create_agents, http, unique, wait_for

FAMILIES = [
    "kahuna_ha_role", "kahuna_http_requests", "kahuna_http_request_duration_seconds",
    "kahuna_store_operation_duration_seconds", "kahuna_store_operation_errors", "kahuna_store_cache_reads",
    "kahuna_hub_connected_agents", "kahuna_hub_sessions", "kahuna_hub_handshakes", "kahuna_hub_calls",
    "kahuna_hub_call_duration_seconds", "kahuna_hub_frames_received", "kahuna_hub_frames_sent",
    "kahuna_hub_heartbeat_losses", "kahuna_hub_backpressure_events", "kahuna_hub_send_buffer_overflows",
    "kahuna_mail_outbox_depth",
    "kowabunga_up", "kowabunga_total_scrapes", "kowabunga_regions", "kowabunga_zones",
    "kowabunga_kaktus_allocated_vcpus", "kowabunga_kaktus_allocated_memory_bytes", "kowabunga_kaktus_instances",
    "kowabunga_kaktus_cost", "kowabunga_storage_pools_allocated_bytes", "kowabunga_storage_pools_free_bytes",
    "kowabunga_storage_pools_capacity_bytes", "kowabunga_storage_pools_cost", "kowabunga_virtual_networks",
    "kowabunga_private_subnets", "kowabunga_public_subnets_ips", "kowabunga_projects",
    "kowabunga_project_instances", "kowabunga_project_volumes", "kowabunga_project_allocated_vcpus",
    "kowabunga_project_allocated_memory_bytes", "kowabunga_project_allocated_storage_bytes",
    "kowabunga_project_estimated_cost", "kowabunga_instance_settings", "kowabunga_instance_allocated_vcpus",
    "kowabunga_instance_allocated_memory_bytes", "kowabunga_instance_estimated_cost",
]


def scrape(kahuna) -> tuple[dict[str, str], dict[tuple, float]]:
    """(family name -> type, (sample name, sorted labels) -> value)."""
    resp = urllib3.request("GET", kahuna.url + "/metrics", retries=False, timeout=10)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, samples = {}, {}
    for family in text_string_to_metric_families(resp.data.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples, metric: str, **labels) -> float | None:
    return samples.get((metric, tuple(sorted(labels.items()))))


def series_of(samples, metric: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples.items() if n == metric}


def test_every_family_is_exported_under_its_name(kahuna):
    # the inventory loads once the node serves: a scrape before that says so with kowabunga_up 0
    wait_for(lambda: value(scrape(kahuna)[1], "kowabunga_up") == 1.0, "the inventory loaded", timeout=20)
    types, samples = scrape(kahuna)
    missing = [f for f in FAMILIES if f not in types]
    assert not missing, missing
    assert types["kowabunga_regions"] == "gauge" and types["kahuna_http_requests"] == "counter"
    assert types["kahuna_http_request_duration_seconds"] == "histogram"
    assert value(samples, "kahuna_ha_role", role="single") == 1.0
    before = value(samples, "kowabunga_total_scrapes")
    assert value(scrape(kahuna)[1], "kowabunga_total_scrapes") == before + 1


def test_requests_are_counted_under_their_route_template(kahuna, admin):
    region = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("r"), domain="acme.test"))
    route = "/api/v1/region/{regionId}"
    before = value(scrape(kahuna)[1], "kahuna_http_requests_total", route=route, method="GET", status="200") or 0
    for _ in range(3):
        kowabunga.RegionApi(admin).read_region(region.id)
    assert http(kahuna, "GET", f"/region/{'0' * 24}")[0] == 404
    assert http(kahuna, "GET", f"/no-such-thing/{region.id}")[0] == 404
    _, samples = scrape(kahuna)
    assert value(samples, "kahuna_http_requests_total", route=route, method="GET", status="200") == before + 3
    assert value(samples, "kahuna_http_requests_total", route=route, method="GET", status="404") >= 1
    assert value(samples, "kahuna_http_requests_total", route="<unmatched>", method="GET", status="404") >= 1
    assert value(samples, "kahuna_http_request_duration_seconds_count", route=route, method="GET") >= before + 4
    labels = [v for (_, ls) in samples for _, v in ls]
    assert not [v for v in labels if region.id in v or "0" * 24 in v], "ids must never become labels"


def test_kowabunga_series_follow_creates_updates_and_deletes(kahuna, admin):
    regions = kowabunga.RegionApi(admin)
    name, zone_name = unique("region"), unique("zone")
    region = regions.create_region(kowabunga.Region(name=name, domain="acme.test"))
    zone = regions.create_region_zone(region.id, kowabunga.Zone(name=zone_name))
    _, samples = scrape(kahuna)
    assert value(samples, "kowabunga_regions", name=name) == 1.0
    assert value(samples, "kowabunga_zones", name=zone_name) == 1.0

    renamed = unique("region")
    regions.update_region(region.id, kowabunga.RegionUpdate(name=renamed))
    _, samples = scrape(kahuna)
    assert value(samples, "kowabunga_regions", name=name) is None
    assert value(samples, "kowabunga_regions", name=renamed) == 1.0

    kowabunga.ZoneApi(admin).delete_zone(zone.id)
    regions.delete_region(region.id)
    _, samples = scrape(kahuna)
    assert value(samples, "kowabunga_zones", name=zone_name) is None
    assert value(samples, "kowabunga_regions", name=renamed) is None


def test_store_operations_and_their_errors_are_counted(kahuna, admin):
    name = unique("dup")
    kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=name, domain="acme.test"))
    _, before = scrape(kahuna)
    errors = value(before, "kahuna_store_operation_errors_total", operation="insert", collection="region",
                   error="Conflict") or 0
    assert http(kahuna, "POST", "/region", {"name": name, "domain": "acme.test"})[0] == 409
    _, after = scrape(kahuna)
    assert value(after, "kahuna_store_operation_errors_total", operation="insert", collection="region",
                 error="Conflict") == errors + 1
    assert (value(after, "kahuna_store_operation_duration_seconds_count", operation="insert", collection="region")
            > value(before, "kahuna_store_operation_duration_seconds_count", operation="insert", collection="region"))


def test_a_queued_mail_shows_in_the_outbox_depth(kahuna, admin):
    """No SMTP server configured here: a new user's welcome mail stays queued."""
    before = value(scrape(kahuna)[1], "kahuna_mail_outbox_depth")
    kowabunga.UserApi(admin).create_user(kowabunga.User(name=unique("u"), email=f"{unique('u')}@acme.test",
                                                        role="user"))
    assert value(scrape(kahuna)[1], "kahuna_mail_outbox_depth") == before + 1


def test_agent_session_gauge_up_and_down_and_a_call_counted(kahuna, admin, tmp_path):
    kahuna.config_path = kahuna.config  # what the agent CLI helper reads
    agent = create_agents(kahuna, "Kaktus")[0]
    _, before = scrape(kahuna)
    sessions = value(before, "kahuna_hub_sessions", type="Kaktus") or 0
    accepted = value(before, "kahuna_hub_handshakes_total", result="accepted") or 0
    calls = value(before, "kahuna_hub_calls_total", method="Kaktus.NodeCapabilities", outcome="ok") or 0
    sim = SimAgent(kahuna, tmp_path, agent)
    try:
        sim.wait_connected()
        _, samples = scrape(kahuna)
        assert value(samples, "kahuna_hub_sessions", type="Kaktus") == sessions + 1
        assert value(samples, "kahuna_hub_handshakes_total", result="accepted") >= accepted + 1
        region = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("r"), domain="acme.test"))
        zone_name = unique("zone")
        zone = kowabunga.RegionApi(admin).create_region_zone(region.id, kowabunga.Zone(name=zone_name))
        kaktus_name = unique("kaktus")
        kaktus = kowabunga.ZoneApi(admin).create_zone_kaktus(zone.id, kowabunga.Kaktus(
            name=kaktus_name, agents=[agent["id"]],
            cpu_cost=kowabunga.Cost(price=10.0, currency="EUR"),
            memory_cost=kowabunga.Cost(price=5.0, currency="EUR")))
        _, samples = scrape(kahuna)  # a new Kaktus whose agent is online gets NodeCapabilities at once
        assert value(samples, "kahuna_hub_calls_total", method="Kaktus.NodeCapabilities", outcome="ok") >= calls + 1, \
            series_of(samples, "kahuna_hub_calls_total")
        assert value(samples, "kahuna_hub_call_duration_seconds_count") >= calls + 1
        assert value(samples, "kahuna_hub_frames_received_total") >= 1
        assert value(samples, "kowabunga_kaktus_instances", zone=zone_name, name=kaktus_name) == 0.0
        assert value(samples, "kowabunga_kaktus_cost", zone=zone_name, name=kaktus_name, currency="EUR") == 15.0

        renamed = unique("zone")  # the Kaktus series follow their zone's name
        kowabunga.ZoneApi(admin).update_zone(zone.id, kowabunga.ZoneUpdate(name=renamed))
        _, samples = scrape(kahuna)
        assert value(samples, "kowabunga_kaktus_instances", zone=renamed, name=kaktus_name) == 0.0
        assert value(samples, "kowabunga_kaktus_instances", zone=zone_name, name=kaktus_name) is None
        kowabunga.KaktusApi(admin).delete_kaktus(kaktus.id)
        assert not [ls for ls in series_of(scrape(kahuna)[1], "kowabunga_kaktus_instances")
                    if ("name", kaktus_name) in ls]
    finally:
        sim.stop()
    wait_for(lambda: value(scrape(kahuna)[1], "kahuna_hub_sessions", type="Kaktus") == sessions,
             "the Kaktus session gauge to come back down")


def test_the_inventory_is_loaded_from_the_store_at_start(kahuna, admin):
    name = unique("kept")
    kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=name, domain="acme.test"))
    assert kahuna.stop() == 0
    kahuna.start()
    deadline = time.monotonic() + 10
    while value(scrape(kahuna)[1], "kowabunga_regions", name=name) != 1.0:
        assert time.monotonic() < deadline, "the region's series did not come back after a restart"
        time.sleep(0.05)


def test_inventory_sums_counts_and_follows_renames_without_the_daemon():
    """The inventory's bookkeeping on documents as the store writes them (sans I/O): counts are
    sums of their contributors, names are resolved at scrape time, a series goes with its last
    contributor."""
    from kahuna.observability.inventory import Inventory

    inv = Inventory()
    inv.written("region", {"_id": "r1", "name": "eu"})
    inv.written("vnet", {"_id": "v1", "region_id": "r1", "private": False})
    inv.written("vnet", {"_id": "v2", "region_id": "r1", "private": True})
    inv.written("subnet", {"_id": "s1", "vnet_id": "v1", "cidr": "198.51.100.0/24",
                           "reserved_ranges": [{"first": "198.51.100.1", "last": "198.51.100.10"}],
                           "gw_pool": [{"first": "198.51.100.250", "last": "198.51.100.254"}]})
    inv.written("subnet", {"_id": "s2", "vnet_id": "v2", "cidr": "10.0.0.0/26", "project_id": "p1"})
    inv.written("adapter", {"_id": "a1", "subnet_id": "s1", "addresses": ["198.51.100.20", "198.51.100.21"]})
    inv.written("project", {"_id": "p1", "name": "acme", "usage": {"vcpus": 4, "memory": 8, "storage": 16},
                            "cost": {"price": 12.5, "currency": "EUR"}})
    for i in (1, 2):
        inv.written("instance", {"_id": f"i{i}", "name": f"vm{i}", "project_id": "p1", "vcpus": 2,
                                 "memory": 4, "local_ip": f"10.0.0.{i}"})
    inv.written("volume", {"_id": "vol1", "project_id": "p1"})
    inv.written("mail_outbox", {"_id": "m1"})
    got = inv.samples()
    assert got["kowabunga_virtual_networks"] == {("eu", "public"): 1.0, ("eu", "private"): 1.0}
    assert got["kowabunga_public_subnets_ips"] == {("eu", "24", "reserved"): 15.0, ("eu", "24", "allocated"): 2.0,
                                                    ("eu", "24", "free"): 254.0 - 15 - 2}
    assert got["kowabunga_private_subnets"] == {("eu", "26", "allocated"): 1.0}
    assert got["kowabunga_project_instances"] == {("acme",): 2.0}
    assert got["kowabunga_project_volumes"] == {("acme",): 1.0}
    assert got["kowabunga_project_estimated_cost"] == {("acme", "EUR"): 12.5}
    assert got["kowabunga_instance_settings"] == {("vm1", "acme", "", "10.0.0.1"): 1.0,
                                                  ("vm2", "acme", "", "10.0.0.2"): 1.0}
    assert inv.outbox_depth() == 1

    inv.written("project", {"_id": "p1", "name": "acme2", "usage": {}})  # a rename relabels the instances
    inv.deleted("instance", "i2")
    inv.deleted("adapter", "a1")
    inv.deleted("mail_outbox", "m1")
    got = inv.samples()
    assert got["kowabunga_project_instances"] == {("acme2",): 1.0}
    assert got["kowabunga_instance_allocated_vcpus"] == {("vm1", "acme2"): 2.0}
    assert got["kowabunga_public_subnets_ips"][("eu", "24", "free")] == 254.0 - 15
    assert inv.outbox_depth() == 0
    inv.deleted("instance", "i1")
    inv.deleted("volume", "vol1")
    inv.deleted("project", "p1")
    got = inv.samples()
    assert "kowabunga_projects" not in got and "kowabunga_project_instances" not in got
    assert "kowabunga_instance_settings" not in got
