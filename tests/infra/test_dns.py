"""Region DNS records through the official client, reaching simulated Kiwi agents: pushes on
create/update/delete, full reloads on connect and when a Kiwi's agents change, and the failure
paths (no agent connected, agent error, agent timeout) leaving nothing behind."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, BadRequestException, NotFoundException

from tests.infra.helpers import CALL_TIMEOUT, create_agents, http, region_and_zone, stored, unique, wait_for


def kiwi(admin, region: str, agents: list[dict]) -> kowabunga.Kiwi:
    return kowabunga.RegionApi(admin).create_region_kiwi(region, kowabunga.Kiwi(
        name=unique("kiwi"), agents=[a["id"] for a in agents]))


def record(admin, region: str, name: str, addresses: list[str]) -> kowabunga.DnsRecord:
    return kowabunga.RegionApi(admin).create_region_dns_record(region, kowabunga.DnsRecord(
        name=name, addresses=addresses))


def zone_of(sim, domain: str) -> dict:
    return sim.state().get("zones", {}).get(domain, {})


@pytest.fixture(scope="module")
def agents(kahuna):
    return create_agents(kahuna, "Kiwi", 8)


def test_records_reach_every_kiwi_of_the_region(admin, kahuna, agents, sims):
    regions, records = kowabunga.RegionApi(admin), kowabunga.RecordApi(admin)
    region, _ = region_and_zone(admin, domain="Acme.Test")
    a, b = (sims.start(kahuna, agent).wait_connected() for agent in agents[:2])
    kiwi(admin, region, agents[:2])

    www = record(admin, region, "WWW", ["10.0.0.10", "10.0.0.11"])
    assert (www.name, www.domain, www.addresses) == ("www", "Acme.Test", ["10.0.0.10", "10.0.0.11"])
    doc = stored(kahuna, "dns_record", www.id)
    assert doc["region_id"] == region and doc["domain"] == "Acme.Test"
    for sim in (a, b):
        assert zone_of(sim, "acme.test") == {"www": ["10.0.0.10", "10.0.0.11"]}
    assert www.id in regions.list_region_dns_records(region)
    assert records.read_dns_record(www.id).addresses == ["10.0.0.10", "10.0.0.11"]

    # updates: addresses, then a rename (the old name goes, the new one comes)
    records.update_dns_record(www.id, kowabunga.DnsRecordUpdate(addresses=["10.0.0.12"]))
    assert zone_of(a, "acme.test") == {"www": ["10.0.0.12"]} == zone_of(b, "acme.test")
    renamed = records.update_dns_record(www.id, kowabunga.DnsRecordUpdate(name="web"))
    assert renamed.name == "web" and renamed.addresses == ["10.0.0.12"]
    assert zone_of(a, "acme.test") == {"web": ["10.0.0.12"]} == zone_of(b, "acme.test")
    records.update_dns_record(www.id, kowabunga.DnsRecordUpdate(description="front"))  # nothing pushed
    assert a.state()["calls"].count("UpdateDnsRecord") == 1

    # a Kiwi agent that connects later gets everything with its Reload
    late = agents[2]
    kiwi(admin, region, [late])
    record(admin, region, "db.internal", ["10.0.0.20"])
    late_sim = sims.start(kahuna, late).wait_connected()
    wait_for(lambda: zone_of(late_sim, "acme.test") == {"web": ["10.0.0.12"], "db.internal": ["10.0.0.20"]},
             "the reload of a late Kiwi")
    assert late_sim.state()["reloads"] >= 1 and "CreateDnsRecord" not in late_sim.state()["calls"]

    # an agent already online that a Kiwi starts listing reloads at once
    extra = sims.start(kahuna, agents[3]).wait_connected()
    assert zone_of(extra, "acme.test") == {}
    k = kiwi(admin, region, [])
    kowabunga.KiwiApi(admin).update_kiwi(k.id, kowabunga.KiwiUpdate(agents=[agents[3]["id"]]))
    assert zone_of(extra, "acme.test") == {"web": ["10.0.0.12"], "db.internal": ["10.0.0.20"]}
    # ... and forgets the region when it is no longer listed
    kowabunga.KiwiApi(admin).update_kiwi(k.id, kowabunga.KiwiUpdate(agents=[]))
    assert extra.state()["zones"] == {}

    records.delete_dns_record(www.id)
    for sim in (a, b, late_sim):
        assert "web" not in zone_of(sim, "acme.test")
    with pytest.raises(NotFoundException):
        records.read_dns_record(www.id)


def test_record_validation(admin, kahuna):
    region, _ = region_and_zone(admin)  # no Kiwi: nobody to tell, records are just kept
    ok = record(admin, region, "api", ["192.0.2.1"])
    for body, status in (({"name": "bad name", "addresses": ["192.0.2.1"]}, 400),
                         ({"name": "-x", "addresses": ["192.0.2.1"]}, 400),
                         ({"name": "x" * 64, "addresses": ["192.0.2.1"]}, 400),
                         ({"name": "v6", "addresses": ["2001:db8::1"]}, 400),
                         ({"name": "none", "addresses": []}, 400),
                         ({"name": "bad-ip", "addresses": ["192.0.2.300"]}, 400),
                         ({"name": "no-addresses"}, 422),
                         ({"name": "API", "addresses": ["192.0.2.2"]}, 409),
                         ({"name": "x", "addresses": ["192.0.2.2"], "domain": "evil.test"}, 201)):
        got, answer = http(kahuna, "POST", f"/region/{region}/record", body)
        assert got == status, (body, answer)
    assert answer["domain"] == "acme.test"  # read-only: ignored on input
    no_domain = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("region"), domain=""))
    with pytest.raises(BadRequestException) as err:
        record(admin, no_domain.id, "www", ["192.0.2.1"])
    assert "no domain" in err.value.body
    with pytest.raises(kowabunga.exceptions.ConflictException):
        kowabunga.RegionApi(admin).delete_region(region)
    kowabunga.RecordApi(admin).delete_dns_record(ok.id)


def test_no_connected_kiwi_agent_is_503_and_nothing_is_created(admin, kahuna, agents):
    region, _ = region_and_zone(admin)
    kiwi(admin, region, [agents[4]])  # never started
    with pytest.raises(ApiException) as err:
        record(admin, region, "www", ["10.0.0.1"])
    assert err.value.status == 503 and "no eligible agent" in err.value.body
    assert kowabunga.RegionApi(admin).list_region_dns_records(region) == []


def test_agent_error_and_timeout_leave_nothing_behind(admin, kahuna, agents, sims):
    region, _ = region_and_zone(admin, domain="err.test")
    good = sims.start(kahuna, agents[5]).wait_connected()
    failing = sims.start(kahuna, agents[6], fail={"CreateDnsRecord": "dns: zone is read-only"},
                         delay={"UpdateDnsRecord": CALL_TIMEOUT + 1}).wait_connected()
    kiwi(admin, region, [agents[5], agents[6]])

    # the second agent refuses: 502 with its words; the first one is told to forget it again
    with pytest.raises(ApiException) as err:
        record(admin, region, "www", ["10.0.0.1"])
    assert err.value.status == 502 and "zone is read-only" in err.value.body and agents[6]["id"] in err.value.body
    assert kowabunga.RegionApi(admin).list_region_dns_records(region) == []
    assert zone_of(good, "err.test") == {} and good.state()["calls"][-1] == "DeleteDnsRecord"

    # a record pushed while the failing agent is unlisted, then an update that times out on it:
    # 504, the record keeps its addresses, and the agent already updated is set back
    k = kowabunga.RegionApi(admin).list_region_kiwis(region)[0]
    kowabunga.KiwiApi(admin).update_kiwi(k, kowabunga.KiwiUpdate(agents=[agents[5]["id"]]))
    db = record(admin, region, "db", ["10.0.0.2"])
    kowabunga.KiwiApi(admin).update_kiwi(k, kowabunga.KiwiUpdate(agents=[agents[5]["id"], agents[6]["id"]]))
    assert zone_of(failing, "err.test") == {"db": ["10.0.0.2"]}  # reloaded when listed
    with pytest.raises(ApiException) as err:
        kowabunga.RecordApi(admin).update_dns_record(db.id, kowabunga.DnsRecordUpdate(addresses=["10.0.0.3"]))
    assert err.value.status == 504 and "timed out" in err.value.body
    assert kowabunga.RecordApi(admin).read_dns_record(db.id).addresses == ["10.0.0.2"]
    assert zone_of(good, "err.test") == {"db": ["10.0.0.2"]}
