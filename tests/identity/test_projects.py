"""Projects, teams and who sees what, through the official client: superAdmin, a projectAdmin
managing the projects of their teams, users reading the projects of their teams only."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import (BadRequestException, ConflictException, ForbiddenException,
                                  NotFoundException)

from tests.identity.helpers import create_confirmed_user, http, jwt_client, login, unique
from tests.kahuna_proc import MASTER_KEY


@pytest.fixture(scope="module")
def setup(kahuna, admin, smtp_sink):
    regions = kowabunga.RegionApi(admin)
    r1 = regions.create_region(kowabunga.Region(name=unique("r"), domain="r1.acme.test")).id
    r2 = regions.create_region(kowabunga.Region(name=unique("r"), domain="r2.acme.test")).id
    people = {}
    for name, role in (("pa", "projectAdmin"), ("alice", "user"), ("bob", "user"), ("pa2", "projectAdmin")):
        user, password = create_confirmed_user(kahuna, admin, smtp_sink, role=role)
        people[name] = (user, login(kahuna, user.email, password))
    teams = kowabunga.TeamApi(admin)
    t1 = teams.create_team(kowabunga.Team(name=unique("t1"), users=[people["pa"][0].id, people["alice"][0].id]))
    t2 = teams.create_team(kowabunga.Team(name=unique("t2"), users=[people["bob"][0].id, people["pa2"][0].id]))
    return {"r1": r1, "r2": r2, "t1": t1.id, "t2": t2.id, "people": people}


def as_(kahuna, setup, who):
    return jwt_client(kahuna, setup["people"][who][1])


def test_superadmin_project_fields_round_trip(kahuna, admin, setup):
    projects = kowabunga.ProjectApi(admin)
    created = projects.create_project(kowabunga.Project(
        name=unique("full"), description="d", domain="full.acme.test", root_password="S3cret-root",
        bootstrap_user="ops", bootstrap_pubkey="ssh-ed25519 AAAA ops@acme", tags=["prod", "eu"],
        metadatas=[kowabunga.Metadata(key="owner", value="ops")],
        quotas=kowabunga.ProjectResources(vcpus=8, memory=16 << 30, storage=1 << 40, instances=4),
        teams=[setup["t1"]], regions=[setup["r1"], setup["r1"]]), subnet_size=26)
    read = projects.read_project(created.id)
    assert read.root_password is None  # accepted, never served
    assert (read.domain, read.bootstrap_user, read.tags) == ("full.acme.test", "ops", ["prod", "eu"])
    assert read.metadatas[0].key == "owner" and read.quotas.vcpus == 8 and read.quotas.instances == 4
    assert read.teams == [setup["t1"]] and read.regions == [setup["r1"]]  # duplicates folded
    assert read.private_subnets == [] and read.reserved_vrrp_ids == []
    updated = projects.update_project(created.id, kowabunga.ProjectUpdate(
        description="d2", quotas=kowabunga.ProjectResources(vcpus=16)))
    assert (updated.description, updated.quotas.vcpus, updated.quotas.memory, updated.tags) == ("d2", 16, 0, ["prod", "eu"])
    assert projects.read_project_cost(created.id).price == 0
    usage = projects.read_project_usage(created.id)
    assert (usage.vcpus, usage.memory, usage.storage, usage.instances) == (0, 0, 0, 0)
    status, body, _ = http(kahuna, "PUT", f"/project/{created.id}", {"domain": "other.acme.test"}, key=MASTER_KEY)
    assert status == 400 and "domain" in body["reason"]
    projects.delete_project(created.id)
    with pytest.raises(NotFoundException):
        projects.read_project(created.id)


def test_bad_references_and_subnet_size(kahuna, admin, setup):
    projects = kowabunga.ProjectApi(admin)
    unknown = "0123456789abcdef01234567"
    for teams, regions in (([unknown], [setup["r1"]]), ([setup["t1"]], [unknown]), ([], [setup["r1"]])):
        with pytest.raises(BadRequestException):
            projects.create_project(kowabunga.Project(name=unique("bad"), teams=teams, regions=regions))
    for size in ("7", "31", "abc"):  # the client refuses these itself: sent raw
        status, body, _ = http(kahuna, "POST", f"/project?subnetSize={size}",
                               {"name": unique("bad"), "teams": [setup["t1"]], "regions": [setup["r1"]]},
                               key=MASTER_KEY)
        assert status == 400 and "subnetSize" in body["reason"]
    assert not [p for p in projects.list_projects() if projects.read_project(p).name.startswith("bad")]


def test_project_admin_manages_the_projects_of_their_teams(kahuna, setup):
    with as_(kahuna, setup, "pa") as client:
        projects = kowabunga.ProjectApi(client)
        # a team they are not in is unknown to them, whether or not it exists
        with pytest.raises(BadRequestException) as exc:
            projects.create_project(kowabunga.Project(name=unique("p"), teams=[setup["t2"]], regions=[setup["r1"]]))
        assert "not found" in exc.value.body
        mine = projects.create_project(kowabunga.Project(name=unique("pa-proj"), teams=[setup["t1"]],
                                                         regions=[setup["r1"]]), subnet_size=26)
        assert mine.id in projects.list_projects()
        projects.update_project(mine.id, kowabunga.ProjectUpdate(description="managed", regions=[setup["r1"], setup["r2"]]))
        with pytest.raises(BadRequestException):
            projects.update_project(mine.id, kowabunga.ProjectUpdate(teams=[setup["t1"], setup["t2"]]))
        assert projects.read_project(mine.id).teams == [setup["t1"]]
        # nothing on infrastructure beyond reads
        with pytest.raises(ForbiddenException):
            kowabunga.RegionApi(client).create_region(kowabunga.Region(name=unique("r"), domain="x"))
        assert setup["r1"] in kowabunga.RegionApi(client).list_regions()
    with as_(kahuna, setup, "pa2") as client:  # another team's projectAdmin
        other = kowabunga.ProjectApi(client)
        assert mine.id not in other.list_projects()
        for call in (lambda: other.read_project(mine.id), lambda: other.delete_project(mine.id),
                     lambda: other.update_project(mine.id, kowabunga.ProjectUpdate(description="x"))):
            with pytest.raises(NotFoundException):
                call()
    with as_(kahuna, setup, "pa") as client:
        kowabunga.ProjectApi(client).delete_project(mine.id)


def test_users_see_and_use_only_their_teams_projects(kahuna, admin, setup):
    projects = kowabunga.ProjectApi(admin)
    p1 = projects.create_project(kowabunga.Project(name=unique("p1"), teams=[setup["t1"]], regions=[setup["r1"]]))
    p2 = projects.create_project(kowabunga.Project(name=unique("p2"), teams=[setup["t2"]], regions=[setup["r2"]]))
    with as_(kahuna, setup, "alice") as client:
        api = kowabunga.ProjectApi(client)
        assert api.list_projects() == [p1.id]
        assert api.read_project(p1.id).name == p1.name
        assert api.read_project_usage(p1.id).instances == 0
        with pytest.raises(ForbiddenException):  # a member may see it, not manage it
            api.update_project(p1.id, kowabunga.ProjectUpdate(description="mine now"))
        with pytest.raises(ForbiddenException):
            api.delete_project(p1.id)
        with pytest.raises(ForbiddenException):
            api.create_project(kowabunga.Project(name=unique("x"), teams=[setup["t1"]], regions=[setup["r1"]]))
        for call in (lambda: api.read_project(p2.id), lambda: api.read_project_cost(p2.id)):
            with pytest.raises(NotFoundException):
                call()
        teams = kowabunga.TeamApi(client)
        assert teams.list_teams() == [setup["t1"]]
        with pytest.raises(NotFoundException):
            teams.read_team(setup["t2"])
        with pytest.raises(ForbiddenException):
            teams.update_team(setup["t1"], kowabunga.TeamUpdate(users=[]))

    # leaving the team takes effect at once; joining again too
    alice = setup["people"]["alice"][0].id
    kowabunga.TeamApi(admin).update_team(setup["t1"], kowabunga.TeamUpdate(users=[setup["people"]["pa"][0].id]))
    with as_(kahuna, setup, "alice") as client:
        assert kowabunga.ProjectApi(client).list_projects() == []
        with pytest.raises(NotFoundException):
            kowabunga.ProjectApi(client).read_project(p1.id)
    kowabunga.TeamApi(admin).update_team(setup["t1"], kowabunga.TeamUpdate(users=[setup["people"]["pa"][0].id, alice]))
    with as_(kahuna, setup, "alice") as client:
        assert kowabunga.ProjectApi(client).list_projects() == [p1.id]
    projects.delete_project(p1.id)
    projects.delete_project(p2.id)


def test_teams_keep_references_whole(kahuna, admin, smtp_sink, setup):
    teams, projects = kowabunga.TeamApi(admin), kowabunga.ProjectApi(admin)
    user, _ = create_confirmed_user(kahuna, admin, smtp_sink)
    team = teams.create_team(kowabunga.Team(name=unique("t"), users=[user.id, user.id]))
    assert teams.read_team(team.id).users == [user.id]
    with pytest.raises(BadRequestException):
        teams.create_team(kowabunga.Team(name=unique("t"), users=["0123456789abcdef01234567"]))
    with pytest.raises(ConflictException):
        teams.create_team(kowabunga.Team(name=teams.read_team(team.id).name, users=[]))
    project = projects.create_project(kowabunga.Project(name=unique("p"), teams=[team.id], regions=[setup["r1"]]))
    with pytest.raises(ConflictException) as exc:
        teams.delete_team(team.id)
    assert project.name in exc.value.body
    # deleting a user takes them out of their teams
    kowabunga.UserApi(admin).delete_user(user.id)
    assert teams.read_team(team.id).users == []
    projects.delete_project(project.id)
    teams.delete_team(team.id)
    with pytest.raises(NotFoundException):
        teams.read_team(team.id)
