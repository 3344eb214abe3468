"""Project DNS records over real HTTP with the official client, reaching simulated Kiwi agents of
the project's regions only; Kiwi reloads carrying project domains; the access rules; and the Koala
web UI's older paths answering exactly like the routes they stand for."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException

from tests.conftest import make_client
from tests.identity.helpers import create_confirmed_user, login
from tests.infra.helpers import create_agents, http, region_and_zone, stored, unique, wait_for


def zone_of(sim, domain: str) -> dict:
    return sim.state().get("zones", {}).get(domain, {})


@pytest.fixture(scope="module")
def world(admin, kahuna, smtp_sink, sims):
    """Regions A and B (a Kiwi each, with a connected agent), region C without the project; a
    project in A and B with domain proj.test; a member (projectAdmin) and an outsider."""
    regions = kowabunga.RegionApi(admin)
    agents = create_agents(kahuna, "Kiwi", 4)
    kaktus = create_agents(kahuna, "Kaktus", 1)[0]
    out = {"regions": [], "sims": [], "agents": agents}
    for i in range(3):
        region, zone = region_and_zone(admin, domain=f"r{i}.test")
        regions.create_region_kiwi(region, kowabunga.Kiwi(name=unique("kiwi"), agents=[agents[i]["id"]]))
        pool = regions.create_region_storage_pool(region, kowabunga.StoragePool(
            name=unique("pool"), pool="rbd", agents=[kaktus["id"]]))
        nfs = regions.create_region_storage_nfs(region, kowabunga.StorageNFS(
            name=unique("nfs"), endpoint="nfs.acme.test", backends=["10.0.0.1"]))
        out["regions"].append({"id": region, "zone": zone, "pool": pool.id, "nfs": nfs.id})
        out["sims"].append(sims.start(kahuna, agents[i]).wait_connected())
    member, password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    outsider, other_password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    teams = kowabunga.TeamApi(admin)
    team = teams.create_team(kowabunga.Team(name=unique("team"), users=[member.id]))
    other_team = teams.create_team(kowabunga.Team(name=unique("team"), users=[outsider.id]))
    projects = kowabunga.ProjectApi(admin)
    out["project"] = projects.create_project(kowabunga.Project(
        name=unique("project"), domain="proj.test", teams=[team.id],
        regions=[out["regions"][0]["id"], out["regions"][1]["id"]])).id
    out["other_project"] = projects.create_project(kowabunga.Project(
        name=unique("project"), domain="other.test", teams=[other_team.id],
        regions=[out["regions"][2]["id"]])).id
    out["member"] = login(kahuna, member.email, password)
    out["outsider"] = login(kahuna, outsider.email, other_password)
    return out


def test_project_records_reach_the_kiwis_of_the_project_regions_only(admin, kahuna, world, sims):
    a, b, c = world["sims"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects = kowabunga.ProjectApi(member)
        www = projects.create_project_dns_record(world["project"], kowabunga.DnsRecord(
            name="WWW", addresses=["10.50.0.10"]))
        assert (www.name, www.domain, www.addresses) == ("www", "proj.test", ["10.50.0.10"])
        doc = stored(kahuna, "dns_record", www.id)
        assert doc["project_id"] == world["project"] and "region_id" not in doc
        assert projects.list_project_dns_records(world["project"]) == [www.id]
        assert zone_of(a, "proj.test") == {"www": ["10.50.0.10"]} == zone_of(b, "proj.test")
        assert zone_of(c, "proj.test") == {} and "CreateDnsRecord" not in c.state()["calls"]

        # the same name twice in a project: 409; in another project: fine
        with pytest.raises(ApiException) as err:
            projects.create_project_dns_record(world["project"], kowabunga.DnsRecord(
                name="www", addresses=["10.50.0.11"]))
        assert err.value.status == 409
        other = kowabunga.ProjectApi(admin).create_project_dns_record(world["other_project"], kowabunga.DnsRecord(
            name="www", addresses=["10.60.0.1"]))
        assert zone_of(c, "other.test") == {"www": ["10.60.0.1"]} and zone_of(a, "other.test") == {}

        # bad input: 400/422 naming the field, nothing stored, nothing pushed
        for body in ({"name": "x"}, {"name": "x", "addresses": ["nope"]}, {"name": "a b", "addresses": ["10.0.0.1"]},
                     {"name": "x", "addresses": ["fd00::1"]}):
            status, answer = http(kahuna, "POST", f"/project/{world['project']}/record", body, key=None,
                                  token=world["member"])
            assert status in (400, 422), (body, answer)
        assert projects.list_project_dns_records(world["project"]) == [www.id]

    # superAdmin uses the /record/{id} routes on project records: update, rename, delete
    records = kowabunga.RecordApi(admin)
    records.update_dns_record(www.id, kowabunga.DnsRecordUpdate(addresses=["10.50.0.12"]))
    assert zone_of(a, "proj.test") == {"www": ["10.50.0.12"]} == zone_of(b, "proj.test")
    records.update_dns_record(www.id, kowabunga.DnsRecordUpdate(name="web"))
    assert zone_of(a, "proj.test") == {"web": ["10.50.0.12"]} == zone_of(b, "proj.test")
    assert zone_of(c, "proj.test") == {}

    # a reconnecting Kiwi gets the project domain with its records in its Reload
    a.stop()
    a.wait_disconnected()
    a2 = sims.start(kahuna, world["agents"][0]).wait_connected()
    wait_for(lambda: zone_of(a2, "proj.test") == {"web": ["10.50.0.12"]}, "the project domain in the reload")
    assert zone_of(a2, "r0.test") == {} and "other.test" not in a2.state()["zones"]
    world["sims"][0] = a2

    records.delete_dns_record(www.id)
    assert zone_of(a2, "proj.test") == {} == zone_of(b, "proj.test")
    records.delete_dns_record(other.id)
    assert zone_of(c, "other.test") == {}


def test_project_records_need_a_project_domain_and_a_connected_kiwi(admin, kahuna, world, sims):
    projects = kowabunga.ProjectApi(admin)
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[]))
    bare = projects.create_project(kowabunga.Project(name=unique("project"), teams=[team.id],
                                                     regions=[world["regions"][2]["id"]]))
    status, answer = http(kahuna, "POST", f"/project/{bare.id}/record", {"name": "x", "addresses": ["10.0.0.1"]})
    assert status in (400, 422) and "domain" in answer["reason"]
    # the only Kiwi agent of the project's region offline: 503 and nothing stored
    c = world["sims"][2]
    c.stop()
    c.wait_disconnected()
    status, answer = http(kahuna, "POST", f"/project/{world['other_project']}/record",
                          {"name": "late", "addresses": ["10.0.0.1"]})
    assert status == 503, answer
    assert projects.list_project_dns_records(world["other_project"]) == []
    world["sims"][2] = sims.start(kahuna, world["agents"][2]).wait_connected()


def test_another_projects_member_sees_none_of_it(admin, kahuna, world):
    rec = kowabunga.ProjectApi(admin).create_project_dns_record(world["project"], kowabunga.DnsRecord(
        name="db", addresses=["10.50.0.20"]))
    for method, path, body in (("GET", f"/project/{world['project']}/records", None),
                               ("POST", f"/project/{world['project']}/record", {"name": "y", "addresses": ["10.0.0.2"]})):
        status, answer = http(kahuna, method, path, body, key=None, token=world["outsider"])
        assert status == 404, (method, path, answer)
    status, _ = http(kahuna, "GET", f"/record/{rec.id}", key=None, token=world["outsider"])
    assert status in (403, 404)
    status, _ = http(kahuna, "GET", f"/project/{world['project']}/records", key=None)
    assert status == 401
    kowabunga.RecordApi(admin).delete_dns_record(rec.id)


def test_a_project_with_records_is_not_deleted_and_its_records_leave_the_kiwis(admin, kahuna, world):
    projects = kowabunga.ProjectApi(admin)
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[]))
    gone = projects.create_project(kowabunga.Project(name=unique("project"), domain="gone.test", teams=[team.id],
                                                     regions=[world["regions"][1]["id"]]))
    rec = projects.create_project_dns_record(gone.id, kowabunga.DnsRecord(name="x", addresses=["10.9.0.1"]))
    b = world["sims"][1]
    assert zone_of(b, "gone.test") == {"x": ["10.9.0.1"]}
    # issue 8: a project delete is refused (409) while it has records, naming them
    status, body = http(kahuna, "DELETE", f"/project/{gone.id}")
    assert status == 409 and "1 DNS record" in body["reason"]
    assert zone_of(b, "gone.test") == {"x": ["10.9.0.1"]}
    kowabunga.RecordApi(admin).delete_dns_record(rec.id)
    projects.delete_project(gone.id)
    assert zone_of(b, "gone.test") == {}
    assert stored(kahuna, "dns_record", rec.id) is None


def test_koala_paths_are_aliases(admin, kahuna, world):
    region = world["regions"][0]
    for token in (None, world["member"], world["outsider"]):
        key = None if token else "__master__"
        args = {"key": None, "token": token} if token else {}
        for old, new in ((f"/region/{region['id']}/nfs", f"/region/{region['id']}/nfses"),
                         (f"/nfs/{region['nfs']}/kylo", f"/nfs/{region['nfs']}/kylos"),
                         (f"/project/{world['project']}/region/{region['id']}/kylo",
                          f"/project/{world['project']}/region/{region['id']}/kylos")):
            assert http(kahuna, "GET", old, **args) == http(kahuna, "GET", new, **args), (old, key)
    status, body = http(kahuna, "GET", f"/region/{region['id']}/nfs")
    assert status == 200 and body == [region["nfs"]]
    status, body = http(kahuna, "GET", f"/region/{region['id']}/nfs", key=None, token=world["member"])
    assert status == 200 and body == [region["nfs"]]
    status, body = http(kahuna, "GET", f"/region/{region['id']}/nfs", key=None, token=world["outsider"])
    assert status == 200 and body == []
    status, _ = http(kahuna, "GET", f"/nfs/{region['nfs']}/kylo", key=None, token=world["member"])
    assert status == 403
    status, body = http(kahuna, "GET", f"/project/{world['project']}/region/{region['id']}/kylo",
                        key=None, token=world["member"])
    assert status == 200 and body == []
    status, _ = http(kahuna, "GET", f"/project/{world['project']}/region/{region['id']}/kylo",
                     key=None, token=world["outsider"])
    assert status == 404
    assert kowabunga.ProjectApi(admin).list_project_region_kylos(world["project"], region["id"]) == []
    # PUT /resetPassword answers like POST /resetPassword (public, 200 whether or not the address exists)
    for method in ("POST", "PUT"):
        status, _ = http(kahuna, method, "/resetPassword", {"email": "nobody@acme.test"}, key=None)
        assert status == 200, method


def test_a_new_region_domain_reaches_the_region_kiwis(admin, kahuna, world):
    region = world["regions"][1]["id"]
    b = world["sims"][1]
    rec = kowabunga.RegionApi(admin).create_region_dns_record(region, kowabunga.DnsRecord(
        name="api", addresses=["10.70.0.1"]))
    assert zone_of(b, "r1.test") == {"api": ["10.70.0.1"]}
    kowabunga.RegionApi(admin).update_region(region, kowabunga.RegionUpdate(domain="moved.test"))
    wait_for(lambda: zone_of(b, "moved.test") == {"api": ["10.70.0.1"]}, "the region's new domain on its Kiwi")
    assert "r1.test" not in b.state()["zones"]
    assert kowabunga.RecordApi(admin).read_dns_record(rec.id).domain == "moved.test"
    assert zone_of(world["sims"][0], "moved.test") == {}  # another region's Kiwi is not told
    kowabunga.RecordApi(admin).delete_dns_record(rec.id)
    assert zone_of(b, "moved.test") == {}
