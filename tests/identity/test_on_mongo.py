"""The identity paths that lean on the store (email lookup, key digest lookup, sessions, team
membership, the outbox) on the mongo backend too, over real TCP (nx-27017)."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ConflictException, NotFoundException

from tests.conftest import make_client
from tests.identity.helpers import (KEY_LINE, create_confirmed_user, http, identity_config, jwt_client,
                                    login, unique)
from tests.kahuna_proc import Kahuna
from tests.nx_server import nx_server


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    work = tmp_path_factory.mktemp("identity-mongo")
    with nx_server() as nx:
        config = identity_config(work, smtp_sink, db={"uri": nx.uri, "name": "kahuna_identity"})
        with Kahuna(work, config) as k:
            yield k


def test_accounts_keys_sessions_and_visibility_on_mongo(kahuna, smtp_sink):
    with make_client(kahuna) as admin:
        user, password = create_confirmed_user(kahuna, admin, smtp_sink)
        with pytest.raises(ConflictException):  # the unique email index holds on mongo too
            kowabunga.UserApi(admin).create_user(kowabunga.User(name="x", email=user.email, role="user"))
        region = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("r"), domain="r.test"))
        team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("t"), users=[user.id]))
        mine = kowabunga.ProjectApi(admin).create_project(
            kowabunga.Project(name=unique("p"), teams=[team.id], regions=[region.id]))
        other = kowabunga.ProjectApi(admin).create_project(kowabunga.Project(
            name=unique("p"), teams=[kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("t"), users=[])).id],
            regions=[region.id]))
        kowabunga.UserApi(admin).set_user_api_token(user.id)
    key = KEY_LINE.search(smtp_sink.wait_for(user.email, "API key").body).group(1)
    token = login(kahuna, user.email, password)
    for client_of in (lambda: jwt_client(kahuna, token), lambda: make_client(kahuna, api_key=key)):
        with client_of() as client:
            projects = kowabunga.ProjectApi(client)
            assert projects.list_projects() == [mine.id]
            with pytest.raises(NotFoundException):
                projects.read_project(other.id)
    with jwt_client(kahuna, token) as client:
        kowabunga.UserApi(client).logout()
    assert http(kahuna, "GET", "/project", token=token)[0] == 401
    assert http(kahuna, "GET", "/project", key=key)[0] == 200
