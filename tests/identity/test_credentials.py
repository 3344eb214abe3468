"""API keys and JWTs as credentials: master key, user keys (mailed, rotated, expiring, revoked),
strict bearer parsing, expired/forged/revoked tokens."""

from __future__ import annotations

import re
import time
from datetime import date, timedelta

import kowabunga
import pytest
from kowabunga.exceptions import UnauthorizedException, UnprocessableEntityException

from tests.identity.helpers import (KEY_LINE, admin_users, create_confirmed_user, forge_jwt, http,
                                    jwt_claims, jwt_client, key_client, login, unique)
from tests.kahuna_proc import MASTER_KEY


@pytest.fixture(scope="module")
def member(kahuna, admin, smtp_sink):
    """A confirmed user and their password."""
    return create_confirmed_user(kahuna, admin, smtp_sink)


def mailed_key(sink, email, count):
    mail = sink.wait_for(email, "Your Kowabunga API key", count=count)
    return KEY_LINE.search(mail.body).group(1)


def test_user_key_is_mailed_rotated_and_found(kahuna, member, smtp_sink):
    user, password = member
    token = login(kahuna, user.email, password)
    seen = len([m for m in smtp_sink.to(user.email) if "API key" in m.subject])
    with jwt_client(kahuna, token) as client:
        api = kowabunga.UserApi(client)
        first = api.set_user_api_token(user.id)  # a user rotates their own key
        assert first.expire is False and first.expiration_date is None and first.id
        key = mailed_key(smtp_sink, user.email, seen + 1)
        # the response carries metadata only
        status, raw, _ = http(kahuna, "PATCH", f"/user/{user.id}/token", token=token)
        # no expiry: expiration_date is absent, not null (0.58 types it as a date string, issue 12)
        assert status == 200 and set(raw) == {"id", "name", "description", "expire"}
        assert raw["id"] == first.id  # rotation keeps the token document
        rotated = mailed_key(smtp_sink, user.email, seen + 2)
        assert rotated != key
        assert kowabunga.TokenApi(client).list_api_tokens() == [first.id]

    assert http(kahuna, "GET", f"/user/{user.id}", key=key)[0] == 401  # rotated away
    with key_client(kahuna, rotated) as client:
        assert kowabunga.UserApi(client).read_user(user.id).email == user.email
        assert kowabunga.TokenApi(client).read_api_token(first.id).name.endswith("-api-key")
    # any change to a key's last character is a different key
    wrong = rotated[:-1] + ("a" if rotated[-1] != "a" else "b")
    assert http(kahuna, "GET", "/region", key=wrong)[0] == 401


def test_key_expiry_and_deletion(kahuna, admin, member, smtp_sink):
    user, _ = member
    users, tokens = admin_users(admin), kowabunga.TokenApi(admin)
    seen = len([m for m in smtp_sink.to(user.email) if "API key" in m.subject])
    tomorrow = date.today() + timedelta(days=1)
    token = users.set_user_api_token(user.id, expire=True, expiration_date=tomorrow)
    assert token.expire is True and token.expiration_date == tomorrow
    key = mailed_key(smtp_sink, user.email, seen + 1)
    assert "until " + tomorrow.isoformat() in smtp_sink.wait_for(user.email, "API key", count=seen + 1).body
    assert http(kahuna, "GET", "/region", key=key)[0] == 200

    # refused once its date is past (moving the date back is how an admin expires a key now)
    yesterday = date.today() - timedelta(days=1)
    updated = tokens.update_api_token(token.id, kowabunga.ApiTokenUpdate(expiration_date=yesterday))
    assert updated.expiration_date == yesterday
    status, body, _ = http(kahuna, "GET", "/region", key=key)
    assert status == 401 and "expired" in body["reason"]
    tokens.update_api_token(token.id, kowabunga.ApiTokenUpdate(expire=False))
    assert http(kahuna, "GET", "/region", key=key)[0] == 200

    # a new key cannot be born expired, and an expiring one needs its date (422: the only
    # client-error status 0.58 documents for this operation, issue 12)
    with pytest.raises(UnprocessableEntityException):
        users.set_user_api_token(user.id, expire=True, expiration_date=yesterday)
    with pytest.raises(UnprocessableEntityException):
        users.set_user_api_token(user.id, expire=True)
    status, body, _ = http(kahuna, "PATCH", f"/user/{user.id}/token?expire=maybe", key=MASTER_KEY)
    assert status == 422 and "expire" in body["reason"]
    assert http(kahuna, "GET", "/region", key=key)[0] == 200  # refused rotations changed nothing

    tokens.delete_api_token(token.id)
    assert http(kahuna, "GET", "/region", key=key)[0] == 401
    assert token.id not in tokens.list_api_tokens()


def test_master_key_and_bad_keys(kahuna):
    assert http(kahuna, "GET", "/user", key=MASTER_KEY)[0] == 200
    for bad in ("x", MASTER_KEY + "x", MASTER_KEY[:-1], "A" * 64, "é" * 64, ""):
        status, body, _ = http(kahuna, "GET", "/region", headers={"X-API-Key": bad})
        assert status == 401 and set(body) == {"status", "error", "reason"}, bad
    # two credentials: both must be valid
    status, _, _ = http(kahuna, "GET", "/region", key=MASTER_KEY, headers={"Authorization": "Bearer a.b.c"})
    assert status == 401


def test_expired_forged_and_malformed_tokens(kahuna, member):
    user, password = member
    token = login(kahuna, user.email, password)
    claims = jwt_claims(token)
    assert http(kahuna, "GET", f"/user/{user.id}", token=token)[0] == 200

    # the very same session, signed with the right key, but past its expiry
    expired = forge_jwt({**claims, "exp": int(time.time()) - 1})
    status, body, _ = http(kahuna, "GET", f"/user/{user.id}", token=expired)
    assert status == 401 and "expired" in body["reason"]
    # still valid tokens of the same session work (the forgery is exactly right but for exp)
    assert http(kahuna, "GET", f"/user/{user.id}", token=forge_jwt(claims))[0] == 200

    refused = {
        "wrong key": forge_jwt(claims, signature="not-the-signature"),
        "alg none": forge_jwt(claims, header={"alg": "none", "typ": "JWT"}),
        "HS512 claim": forge_jwt(claims, header={"alg": "HS512", "typ": "JWT"}),
        "other issuer": forge_jwt({**claims, "iss": "Mallory"}),
        "promoted": forge_jwt({**claims, "role": "superAdmin", "uid": "0123456789abcdef01234567"}),
        "unknown session": forge_jwt({**claims, "jti": "0123456789abcdef01234567"}),
        "no jti": forge_jwt({k: v for k, v in claims.items() if k != "jti"}),
        "string exp": forge_jwt({**claims, "exp": str(claims["exp"])}),
        "truncated": token[:-2],
        "two parts": ".".join(token.split(".")[:2]),
    }
    for why, bad in refused.items():
        assert http(kahuna, "GET", f"/user/{user.id}", token=bad)[0] == 401, why

    # strict header parsing (upstream sliced off 7 characters whatever they were)
    for header in (f"Token {token}", f"Bearer  {token}", f"Bearer {token} x", f"Bearer{token}",
                   "Bearer ", "Bearer", f"XXXXXXX{token}"):
        status, _, _ = http(kahuna, "GET", f"/user/{user.id}", headers={"Authorization": header})
        assert status == 401, header
    assert http(kahuna, "GET", f"/user/{user.id}", headers={"Authorization": f"bearer {token}"})[0] == 200


def test_logout_revokes_only_that_session(kahuna, member):
    user, password = member
    one, two = login(kahuna, user.email, password), login(kahuna, user.email, password)
    assert one != two and jwt_claims(one)["jti"] != jwt_claims(two)["jti"]
    with jwt_client(kahuna, one) as client:
        kowabunga.UserApi(client).logout()
    status, body, _ = http(kahuna, "GET", "/region", token=one)
    assert status == 401 and "closed" in body["reason"]
    assert http(kahuna, "GET", "/region", token=two)[0] == 200
    # logging out twice, or anonymously, is refused
    assert http(kahuna, "POST", "/logout", token=one)[0] == 401
    assert http(kahuna, "POST", "/logout")[0] == 401
    with pytest.raises(UnauthorizedException):
        with jwt_client(kahuna, one) as client:
            kowabunga.UserApi(client).logout()


def test_role_changes_apply_at_once(kahuna, admin, member):
    """The role comes from the user document on each request, not from the token's claim."""
    user, password = member
    token = login(kahuna, user.email, password)
    assert http(kahuna, "GET", "/agent", token=token)[0] == 403
    admin_users(admin).update_user(user.id, kowabunga.UserUpdate(role="superAdmin"))
    try:
        assert http(kahuna, "GET", "/agent", token=token)[0] == 200
    finally:
        admin_users(admin).update_user(user.id, kowabunga.UserUpdate(role="user"))
    assert http(kahuna, "GET", "/agent", token=token)[0] == 403


def test_agent_keys_deleted_or_expired_through_token_routes_stop_working_on_the_hub(kahuna, admin, smtp_sink):
    """Agent keys live in the same token collection; changing them through /token reaches the hub."""
    from tests.test_agents import handshake_status

    agents, tokens = kowabunga.AgentApi(admin), kowabunga.TokenApi(admin)
    for change in ("delete", "expire"):
        agent = agents.create_agent(kowabunga.Agent(name=unique(f"kaktus-{change}"), type="Kaktus"))
        token = agents.set_agent_api_token(agent.id)
        mail = smtp_sink.wait_for("ops@acme.test", f"agent API key: {agent.name}")
        key = re.search(r"^([A-Za-z0-9]{64})$", mail.body, re.M).group(1)
        assert handshake_status(kahuna.hub_port, agent.id, "Kaktus", key) == 101
        if change == "delete":
            tokens.delete_api_token(token.id)
        else:
            tokens.update_api_token(token.id, kowabunga.ApiTokenUpdate(
                expire=True, expiration_date=date.today() - timedelta(days=1)))
        assert handshake_status(kahuna.hub_port, agent.id, "Kaktus", key) == 403


def test_remembered_credentials_follow_each_change_at_once(kahuna, admin, smtp_sink):
    """Authentication remembers the principal of a key and of a session (kahuna.api.authn): a
    team change, a rotation and a disabled account are seen on the very next request."""
    user, password = create_confirmed_user(kahuna, admin, smtp_sink)
    users = admin_users(admin)
    seen = len([m for m in smtp_sink.to(user.email) if "API key" in m.subject])
    users.set_user_api_token(user.id)
    key = mailed_key(smtp_sink, user.email, seen + 1)
    token = login(kahuna, user.email, password)
    region = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("r"), domain="m.acme.test")).id
    team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("t"), users=[user.id]))
    project = kowabunga.ProjectApi(admin).create_project(
        kowabunga.Project(name=unique("p"), teams=[team.id], regions=[region])).id
    credentials = ({"key": key}, {"token": token})
    for cred in credentials:
        for _ in range(2):  # the second time from what authentication remembered
            assert http(kahuna, "GET", f"/region/{region}", **cred)[0] == 200
            assert http(kahuna, "GET", f"/project/{project}", **cred)[0] == 200
    kowabunga.TeamApi(admin).update_team(team.id, kowabunga.TeamUpdate(users=[]))
    for cred in credentials:
        assert http(kahuna, "GET", f"/project/{project}", **cred)[0] == 404
        assert http(kahuna, "GET", f"/region/{region}", **cred)[0] == 200
    users.set_user_api_token(user.id)
    rotated = mailed_key(smtp_sink, user.email, seen + 2)
    assert http(kahuna, "GET", f"/region/{region}", key=key)[0] == 401
    assert http(kahuna, "GET", f"/region/{region}", key=rotated)[0] == 200
    # a new address disables the account until confirmed (and closes its sessions)
    users.update_user(user.id, kowabunga.UserUpdate(email=f"moved-{user.email}"))
    assert http(kahuna, "GET", f"/region/{region}", key=rotated)[0] == 401
    assert http(kahuna, "GET", f"/region/{region}", token=token)[0] == 401
    kowabunga.ProjectApi(admin).delete_project(project)
