"""Issue 12 §4: schemathesis over every operation of the 0.58 document (built from the official
client, `openapi-0.58.json`, see `openapi_from_client.py`) that this daemon serves, against a
real Kahuna with the master key: no 5xx, responses conform to their schema and status codes.

Operations the daemon does not serve yet (404 "no such route" or 405 on a probe) are skipped,
so routes are fuzzed as they land; path parameters naming a seeded object (regionId, zoneId …)
get that object's id so the fuzzer reaches past the 404s.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hypothesis
import kowabunga
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.infra.helpers import unique
from tests.kahuna_proc import MASTER_KEY

DOCUMENT = Path(__file__).with_name("openapi-0.58.json")
EXAMPLES = 6
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
# mail senders: without an SMTP relay in this fixture they only test the outbox
SKIP = {"reset_password", "confirm", "confirm_forgot_password"}
# lists under a parent that is not seeded here (a Kawaii needs a whole appliance world), for which
# the 0.58 document lists no 404: an unknown parent is still a 404 JSON error (as every other child
# list answers), so for those only the status check is relaxed, to that one status
UNSEEDED_PARENT_404 = {"list_kawaii_ip_secs"}


@pytest.fixture(scope="module")
def seeds(admin):
    """One object of each basic kind, by the path parameter that names it."""
    regions, zones = kowabunga.RegionApi(admin), kowabunga.ZoneApi(admin)
    region = regions.create_region(kowabunga.Region(name=unique("fz-region"), domain="fz.test"))
    zone = regions.create_region_zone(region.id, kowabunga.Zone(name=unique("fz-zone")))
    agent = kowabunga.AgentApi(admin).create_agent(kowabunga.Agent(name=unique("fz-agent"), type="Kaktus"))
    kaktus = zones.create_zone_kaktus(zone.id, kowabunga.Kaktus(name=unique("fz-hv"), agents=[agent.id]))
    kiwi_agent = kowabunga.AgentApi(admin).create_agent(kowabunga.Agent(name=unique("fz-kiwi"), type="Kiwi"))
    kiwi = regions.create_region_kiwi(region.id, kowabunga.Kiwi(name=unique("fz-kiwi"), agents=[kiwi_agent.id]))
    vnet = regions.create_region_v_net(region.id, kowabunga.VNet(name=unique("fz-vnet"), interface="br0"))
    subnet = kowabunga.VnetApi(admin).create_v_net_subnet(vnet.id, kowabunga.Subnet(
        name=unique("fz-subnet"), cidr="10.9.0.0/24", gateway="10.9.0.1"))
    adapter = kowabunga.SubnetApi(admin).create_subnet_adapter(subnet.id, kowabunga.Adapter(name="fz-nic"))
    pool_agent = kowabunga.AgentApi(admin).create_agent(kowabunga.Agent(name=unique("fz-ceph"), type="Kaktus"))
    pool = regions.create_region_storage_pool(region.id, kowabunga.StoragePool(
        name=unique("fz-pool"), pool="rbd", agents=[pool_agent.id]))
    return {"regionId": region.id, "zoneId": zone.id, "agentId": agent.id, "kaktusId": kaktus.id,
            "kiwiId": kiwi.id, "vnetId": vnet.id, "subnetId": subnet.id, "adapterId": adapter.id,
            "poolId": pool.id}


def _served(kahuna, op, seeds) -> bool:
    path = op.path
    for param in op.path_parameters:
        path = path.replace("{" + param.name + "}", seeds.get(param.name, "0" * 24))
    r = requests.request(op.method.upper(), kahuna.api + path, headers={"X-API-Key": MASTER_KEY},
                         json={} if op.method.lower() in ("post", "put", "patch") else None, timeout=10)
    if r.status_code == 405:
        return False
    if r.status_code == 404:
        try:
            return r.json().get("reason") != "no such route"
        except ValueError:
            return False
    return True


def test_fuzz_served_operations(kahuna, seeds, record_property):
    raw = json.loads(DOCUMENT.read_text())
    schema = schemathesis.openapi.from_dict(raw)
    stats = {"operations": 0, "skipped": 0, "cases": 0, "5xx": 0, "schema": 0, "status": 0}
    failures: list[str] = []
    started = time.monotonic()
    session = requests.Session()
    for result in schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("operationId") in SKIP or not _served(kahuna, op, seeds):
            stats["skipped"] += 1
            continue
        stats["operations"] += 1

        @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=op.as_strategy())
        def run(case):
            for name in list(case.path_parameters or {}):
                if name in seeds:
                    case.path_parameters[name] = seeds[name]
            stats["cases"] += 1
            response = case.call(base_url=kahuna.api, session=session, headers={"X-API-Key": MASTER_KEY})
            if response.status_code >= 500:
                stats["5xx"] += 1
            checks = CHECKS
            if response.status_code == 404 and op.definition.raw.get("operationId") in UNSEEDED_PARENT_404:
                assert response.json()["status"] == 404, response.text
                checks = [not_a_server_error]
            try:
                case.validate_response(response, checks=checks)
            except (Exception, BaseExceptionGroup) as exc:  # failed checks: count, keep fuzzing
                text = str(exc)
                stats["status" if "ST103" in text or "status code" in text.lower() else "schema"] += 1
                if len(failures) < 400:
                    failures.append(f"{op.method.upper()} {op.path} -> {response.status_code}: "
                                    f"{text[:600]}")

        run()
    stats["seconds"] = round(time.monotonic() - started, 1)
    print("fuzz", stats)
    record_property("fuzz", stats)
    assert stats["operations"] > 50
    assert not failures, "\n\n".join(failures[:30])
