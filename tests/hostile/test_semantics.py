"""Issue 12 §3: content types, ApiToken without a null date, agent deletes that would leave
dangling ids."""

from __future__ import annotations

import kowabunga
import pytest

from tests.hostile.test_json import call
from tests.infra.helpers import region_and_zone, unique


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/xml", "multipart/form-data; boundary=x"])
def test_non_json_body_is_415(kahuna, ctype):
    status, answer = call(kahuna, "POST", "/region", b'{"name": "ct", "domain": "ct.test"}', ctype=ctype)
    assert status == 415 and answer["status"] == 415 and "application/json" in answer["reason"]
    assert call(kahuna, "GET", "/region")[1] == []


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8", None])
def test_json_content_types_are_accepted(kahuna, ctype):
    body = b'{"name": "%s", "domain": "ok.test"}' % unique("ct").encode()
    status, answer = call(kahuna, "POST", "/region", body, ctype=ctype or "")
    assert status in (200, 201), answer


def test_official_client_bodyless_calls_still_work(admin):
    agent = kowabunga.AgentApi(admin).create_agent(kowabunga.Agent(name=unique("a"), type="Kaktus"))
    token = kowabunga.AgentApi(admin).set_agent_api_token(agent.id)  # bodyless PATCH
    assert token.id


def test_token_without_expiry_has_no_null_date(kahuna, admin):
    agent = kowabunga.AgentApi(admin).create_agent(kowabunga.Agent(name=unique("a"), type="Kiwi"))
    status, token = call(kahuna, "PATCH", f"/agent/{agent['id'] if isinstance(agent, dict) else agent.id}/token")
    assert status == 200 and "expiration_date" not in token, token
    status, again = call(kahuna, "GET", f"/token/{token['id']}")
    assert status == 200 and "expiration_date" not in again
    status, dated = call(kahuna, "PATCH", f"/agent/{agent.id}/token?expire=true&expirationDate=2999-01-01")
    assert status == 200 and dated["expiration_date"] == "2999-01-01"


def test_agent_listed_by_a_kaktus_cannot_be_deleted(kahuna, admin):
    agents = kowabunga.AgentApi(admin)
    agent = agents.create_agent(kowabunga.Agent(name=unique("hv-agent"), type="Kaktus"))
    _region, zone = region_and_zone(admin)
    kaktus = kowabunga.ZoneApi(admin).create_zone_kaktus(zone, kowabunga.Kaktus(
        name=unique("hv"), agents=[agent.id]))
    status, answer = call(kahuna, "DELETE", f"/agent/{agent.id}")
    assert status == 409 and kaktus.name in answer["reason"] and "Kaktus" in answer["reason"]
    assert call(kahuna, "GET", f"/agent/{agent.id}")[0] == 200
    kowabunga.KaktusApi(admin).delete_kaktus(kaktus.id)
    assert call(kahuna, "DELETE", f"/agent/{agent.id}")[0] == 200
