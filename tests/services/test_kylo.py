"""Kylo NFS shares over real HTTP with the official client and a simulated Kaktus agent of the
NFS storage's pool: the subvolume and the export (clients = the project's private subnet in the
region only), update and delete on the agent, agent failures undone and reported, access."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, NotFoundException

from tests.conftest import make_client
from tests.identity.helpers import create_confirmed_user, login
from tests.infra.helpers import CALL_TIMEOUT, create_agents, http, region_and_zone, stored, unique, wait_for
from tests.services.helpers import flows_left, give_private_subnet


@pytest.fixture(scope="module")
def world(admin, kahuna, smtp_sink, sims):
    regions = kowabunga.RegionApi(admin)
    region, _ = region_and_zone(admin)
    agent = create_agents(kahuna, "Kaktus", 1)[0]
    kaktus = sims.start(kahuna, agent, sim={"fileSystems": ["nfs", "other"]}).wait_connected()
    pool = regions.create_region_storage_pool(region, kowabunga.StoragePool(
        name=unique("pool"), pool="rbd", agents=[agent["id"]]))
    nfs = regions.create_region_storage_nfs(region, kowabunga.StorageNFS(
        name=unique("nfs"), endpoint="nfs.acme.test", fs="nfs", backends=["10.0.0.7", "10.0.0.8"]))
    member, password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    outsider, other_password = create_confirmed_user(kahuna, admin, smtp_sink, role="projectAdmin")
    reader, reader_password = create_confirmed_user(kahuna, admin, smtp_sink, role="user")
    teams = kowabunga.TeamApi(admin)
    team = teams.create_team(kowabunga.Team(name=unique("team"), users=[member.id, reader.id]))
    other_team = teams.create_team(kowabunga.Team(name=unique("team"), users=[outsider.id]))
    projects = kowabunga.ProjectApi(admin)
    project = projects.create_project(kowabunga.Project(name=unique("project"), teams=[team.id], regions=[region]))
    bare = projects.create_project(kowabunga.Project(name=unique("project"), teams=[other_team.id], regions=[region]))
    # the private network comes after the projects (none reserved one at creation): `project` is
    # given the subnet, `bare` has none
    vnet = regions.create_region_v_net(region, kowabunga.VNet(name=unique("vnet"), interface="br0"))
    subnet = kowabunga.VnetApi(admin).create_v_net_subnet(vnet.id, kowabunga.Subnet(
        name=unique("subnet"), cidr="10.42.0.0/26", gateway="10.42.0.1"))
    give_private_subnet(kahuna, project.id, region, subnet.id)
    return {"region": region, "kaktus": kaktus, "pool": pool.id, "nfs": nfs.id, "project": project.id,
            "bare": bare.id, "member": login(kahuna, member.email, password),
            "reader": login(kahuna, reader.email, reader_password),
            "outsider": login(kahuna, outsider.email, other_password)}


def test_kylo_life_cycle(kahuna, world):
    kaktus = world["kaktus"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects, kylos = kowabunga.ProjectApi(member), kowabunga.KyloApi(member)
        share = projects.create_project_region_kylo(world["project"], world["region"], kowabunga.Kylo(
            name="data", description="shared", access="RW", protocols=[4]), nfs_id=world["nfs"])
        assert (share.name, share.access, share.protocols, share.endpoint) == ("data", "RW", [4], "nfs.acme.test")
        doc = stored(kahuna, "kylo", share.id)
        assert doc["project_id"] == world["project"] and doc["nfs_id"] == world["nfs"]
        assert 100 <= doc["export_id"] <= 65000 and doc["clients"] == ["10.42.0.0/26"]
        state = kaktus.state()
        assert "data" in state["filesystems"]["nfs"]
        export = state["exports"][str(doc["export_id"])]
        assert export == {"ID": doc["export_id"], "Name": "data", "FS": "nfs", "Path": doc["subvolume"]["path"],
                          "Access": "RW", "Protocols": [4], "Clients": ["10.42.0.0/26"],
                          "Backends": ["10.0.0.7", "10.0.0.8"], "Port": 54934}
        assert [c for c in state["calls"] if c != "GetStoragePoolStats"][-4:] == [
            "ListFileSystems", "ListFsSubVolumes", "CreateFsSubVolume", "CreateNfsBackends"]

        # every list shows it, the Koala singular path too; the default NFS when nfsId is absent
        assert projects.list_project_region_kylos(world["project"], world["region"]) == [share.id]
        assert http(kahuna, "GET", f"/project/{world['project']}/region/{world['region']}/kylo")[1] == [share.id]
        assert http(kahuna, "GET", f"/nfs/{world['nfs']}/kylos")[1] == [share.id]
        assert kylos.list_kylos() == [share.id]
        assert kylos.read_kylo(share.id).name == "data"

        # same name again: 409, nothing new on the agent
        calls = len(kaktus.state()["calls"])
        with pytest.raises(ApiException) as err:
            projects.create_project_region_kylo(world["project"], world["region"], kowabunga.Kylo(name="data"))
        assert err.value.status == 409
        assert "CreateFsSubVolume" not in kaktus.state()["calls"][calls:]

        updated = kylos.update_kylo(share.id, kowabunga.KyloUpdate(access="RO", protocols=[3, 4], description="ro"))
        assert (updated.access, updated.protocols, updated.description) == ("RO", [3, 4], "ro")
        export = kaktus.state()["exports"][str(doc["export_id"])]
        assert (export["Access"], export["Protocols"], export["Clients"]) == ("RO", [3, 4], ["10.42.0.0/26"])

        assert flows_left(kahuna) == 0
        kylos.delete_kylo(share.id)
        state = kaktus.state()
        assert str(doc["export_id"]) not in state["exports"] and "data" not in state["filesystems"]["nfs"]
        with pytest.raises(NotFoundException):
            kylos.read_kylo(share.id)


def test_kylo_refusals_leave_nothing(admin, kahuna, world):
    kaktus, path = world["kaktus"], f"/project/{world['project']}/region/{world['region']}/kylo"
    for body, status in (({"name": "Bad Name"}, (400, 422)), ({"name": "x", "access": "RX"}, (400, 422)),
                         ({"name": "x", "protocols": [2]}, (400, 422)), ({}, (400, 422))):
        got, answer = http(kahuna, "POST", path + f"?nfsId={world['nfs']}", body)
        assert got in status, (body, answer)
    # a project without a private subnet in the region: 422 naming it, no agent call
    calls = len(kaktus.state()["calls"])
    got, answer = http(kahuna, "POST", f"/project/{world['bare']}/region/{world['region']}/kylo", {"name": "lost"})
    assert got == 422 and "private subnet" in answer["reason"]
    # an unknown NFS storage
    got, answer = http(kahuna, "POST", path + "?nfsId=" + "0" * 24, {"name": "lost"})
    assert got in (400, 422) and "nfsId" in answer["reason"]
    assert [c for c in kaktus.state()["calls"][calls:] if c != "GetStoragePoolStats"] == []
    assert kowabunga.KyloApi(admin).list_kylos() == []


def test_agent_failures_are_reported_and_undone(admin, kahuna, world, sims):
    """The export fails on the agent: 502 with its words, the subvolume made before is removed."""
    kaktus = world["kaktus"]
    kaktus.stop()
    kaktus.wait_disconnected()
    path = f"/project/{world['project']}/region/{world['region']}/kylo"
    got, answer = http(kahuna, "POST", path, {"name": "offline"})
    assert got == 503, answer
    failing = sims.start(kahuna, kaktus.agent, sim={"fileSystems": ["nfs"]},
                          fail={"CreateNfsBackends": "ganesha: 500 Internal Server Error"}).wait_connected()
    got, answer = http(kahuna, "POST", path, {"name": "broken"})
    assert got == 502 and "ganesha: 500" in answer["reason"], answer
    state = failing.state()
    assert "broken" not in state["filesystems"]["nfs"] and state["exports"] == {}
    assert "DeleteFsSubVolume" in state["calls"]
    assert kowabunga.KyloApi(admin).list_kylos() == []
    failing.stop()
    failing.wait_disconnected()
    # the export does not answer in time: 504, and both the export and the subvolume are undone
    slow = sims.start(kahuna, kaktus.agent, sim={"fileSystems": ["nfs"]},
                       delay={"CreateNfsBackends": CALL_TIMEOUT + 1}).wait_connected()
    got, answer = http(kahuna, "POST", path, {"name": "late"})
    assert got == 504, answer
    wait_for(lambda: "DeleteFsSubVolume:ok" in slow.state().get("done", []), "the undo of a timed-out export")
    state = slow.state()
    assert "late" not in state["filesystems"]["nfs"] and "DeleteNfsBackends" in state["calls"]
    assert state["exports"] == {}  # the late export landed before the undo removed it
    assert flows_left(kahuna) == 0
    assert kowabunga.KyloApi(admin).list_kylos() == []
    slow.stop()
    slow.wait_disconnected()
    world["kaktus"] = sims.start(kahuna, kaktus.agent, sim={"fileSystems": ["other"]}).wait_connected()
    # the NFS storage's file system is not served by the cluster: 422, nothing made
    got, answer = http(kahuna, "POST", path, {"name": "nofs"})
    assert got == 422 and "file system nfs" in answer["reason"], answer
    assert "CreateFsSubVolume" not in world["kaktus"].state()["calls"]


def test_another_project_sees_none_of_it(admin, kahuna, world, sims):
    world["kaktus"].stop()
    world["kaktus"].wait_disconnected()
    world["kaktus"] = sims.start(kahuna, world["kaktus"].agent, sim={"fileSystems": ["nfs"]}).wait_connected()
    share = kowabunga.ProjectApi(admin).create_project_region_kylo(world["project"], world["region"],
                                                                   kowabunga.Kylo(name="private"))
    for method, path, body in (("GET", f"/kylo/{share.id}", None), ("PUT", f"/kylo/{share.id}", {"description": "x"}),
                               ("DELETE", f"/kylo/{share.id}", None),
                               ("GET", f"/project/{world['project']}/region/{world['region']}/kylos", None),
                               ("POST", f"/project/{world['project']}/region/{world['region']}/kylo", {"name": "y"})):
        got, answer = http(kahuna, method, path, body, key=None, token=world["outsider"])
        assert got == 404, (method, path, answer)
    assert http(kahuna, "GET", "/kylo", key=None, token=world["outsider"]) == (200, [])
    # a plain user of the project reads, and may not write (403)
    assert http(kahuna, "GET", f"/kylo/{share.id}", key=None, token=world["reader"])[0] == 200
    for method, path, body in (("PUT", f"/kylo/{share.id}", {"description": "x"}), ("DELETE", f"/kylo/{share.id}", None),
                               ("POST", f"/project/{world['project']}/region/{world['region']}/kylo", {"name": "y"}),
                               ("POST", f"/project/{world['project']}/record", {"name": "y", "addresses": ["10.0.0.1"]})):
        got, answer = http(kahuna, method, path, body, key=None, token=world["reader"])
        assert got == 403, (method, path, answer)
    assert http(kahuna, "GET", f"/project/{world['project']}/records", key=None, token=world["reader"]) == (200, [])
    assert http(kahuna, "GET", "/kylo", key=None, token=world["member"]) == (200, [share.id])
    kowabunga.KyloApi(admin).delete_kylo(share.id)


def test_a_failed_export_update_changes_nothing(admin, kahuna, world, sims):
    share = kowabunga.ProjectApi(admin).create_project_region_kylo(world["project"], world["region"],
                                                                   kowabunga.Kylo(name="steady", access="RW"))
    world["kaktus"].stop()
    world["kaktus"].wait_disconnected()
    failing = sims.start(kahuna, world["kaktus"].agent, sim={"fileSystems": ["nfs"]},
                          fail={"UpdateNfsBackends": "ganesha: 404 export not found"}).wait_connected()
    got, answer = http(kahuna, "PUT", f"/kylo/{share.id}", {"access": "RO"})
    assert got == 502 and "ganesha: 404" in answer["reason"], answer
    assert kowabunga.KyloApi(admin).read_kylo(share.id).access == "RW"
    got, _ = http(kahuna, "PUT", f"/kylo/{share.id}", {"description": "no export change"})
    assert got == 200  # nothing the export carries changed: no agent call
    failing.stop()
    failing.wait_disconnected()
    world["kaktus"] = sims.start(kahuna, world["kaktus"].agent, sim={"fileSystems": ["nfs"]}).wait_connected()
    kowabunga.KyloApi(admin).delete_kylo(share.id)
