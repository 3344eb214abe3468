"""One access policy for every route: the expected answer of every route of the running Kahuna
for every kind of caller, derived from the rule each route declares (kahuna.auth.policy).

The routes come from the application production builds (`kahuna.server.build_app`), so a route
added by any feature is covered here without editing this file; a route that bypasses the route
table, or a rule this file has no expectations for, fails the test.

Callers: superAdmin, projectAdmin member/non-member, user member/non-member (of project P1, via
team T1; non-members have their own team T2 and project P2 in another region), anonymous, an
expired JWT, a revoked JWT, a bad API key. Path parameters are filled with objects whose relation
to each caller is known (P1, T1, R1, Z1, the member user and their API key); parameters of kinds
this file does not set up get an unknown id, and then everybody who passes the gate gets 404.
Write routes get a body with an unknown field: a caller let through reaches validation (400) and
nothing changes; a caller refused never does. DELETE routes get a fresh victim per caller.
"""

from __future__ import annotations

import secrets as pysecrets
import time

import pytest
import urllib3

from kahuna.auth import policy
from kahuna.config import Config
from kahuna.resources import catalog
from kahuna.resources.service import Resources
from kahuna.server import Secrets, build_app
from tests.identity.helpers import create_confirmed_user, forge_jwt, http, jwt_claims, login, unique, unique_email
from tests.kahuna_proc import MASTER_KEY

UNKNOWN_ID = "0123456789abcdef01234567"
PROBE_BODY = {"__probe__": 1}
CALLERS = ("superAdmin", "projectAdmin member", "projectAdmin non-member", "user member",
           "user non-member", "anonymous", "expired JWT", "revoked JWT", "bad key")
NOT_AUTHENTICATED = ("anonymous", "expired JWT", "revoked JWT", "bad key")
ROLE = {"superAdmin": "superAdmin", "projectAdmin member": "projectAdmin",
        "projectAdmin non-member": "projectAdmin", "user member": "user", "user non-member": "user"}
# the answers that show the request reached its handler (validation included)
PASS = "pass"
# which rules this file knows how to expect; a new rule in the policy fails the test until added
EXPECTED_RULES = {"public", "authenticated", "admin", "projectCreator", "project", "projectAdmin",
                  "own", "catalogue"}


def production_routes():
    catalog.load()
    secrets = Secrets("m" * 64, "j" * 64, "s" * 64)
    app, table = build_app(Resources(None, config=Config(), secrets=secrets), secrets)
    return app, table.routes


def expected(route, caller: str, related: dict[str, set[str]], known: set[str]) -> set | str:
    """What `caller` must get on `route`: PASS, or the exact refusal status(es)."""
    rule = route.rule
    assert rule in EXPECTED_RULES, f"no expectations for rule {rule!r} ({route.method} {route.path})"
    others_known = all(p in known for p in route.params if p != route.target)
    passed = PASS if others_known else "pass-or-404"
    if rule == "public":
        # the metadata endpoint identifies instances itself (kahuna.metadata.identify): user
        # credentials are not instance credentials
        return {401} if route.name == "metadata" else PASS
    if caller in NOT_AUTHENTICATED:
        return {401}
    role = ROLE[caller]
    if role != "superAdmin":
        if rule == "admin":
            return {403}
        if rule == "projectCreator" and role == "user":
            return {403}
    if route.target is not None and route.target not in known:
        return {404}
    if role == "superAdmin" or rule in ("authenticated", "projectCreator", "admin"):
        return passed
    if route.target is None:
        return PASS  # a list: filtered, never refused
    if caller not in related[route.target]:
        return {404}  # may not see it: exactly like an unknown id
    if rule == "projectAdmin" and role != "projectAdmin":
        return {403}  # may see the project, may not manage it
    return passed


def matches(status: int, want) -> bool:
    if want == PASS:
        return 200 <= status < 300 or status in (400, 409, 422)
    if want == "pass-or-404":
        return matches(status, PASS) or status == 404
    return status in want


@pytest.fixture(scope="module")
def world(kahuna, admin, smtp_sink):
    """Regions R1 (zone Z1) and R2, teams T1 and T2, projects P1 (T1, R1) and P2 (T2, R2)."""
    def post(path, body):
        status, doc, _ = http(kahuna, "POST", path, body, key=MASTER_KEY)
        assert status == 201, (path, doc)
        return doc["id"]

    users, passwords = {}, {}
    for caller, role in (("superAdmin", "superAdmin"), ("projectAdmin member", "projectAdmin"),
                         ("projectAdmin non-member", "projectAdmin"), ("user member", "user"),
                         ("user non-member", "user")):
        user, password = create_confirmed_user(kahuna, admin, smtp_sink, role=role)
        users[caller], passwords[caller] = user.id, (user.email, password)
    r1 = post("/region", {"name": unique("r1"), "domain": "r1.acme.test"})
    r2 = post("/region", {"name": unique("r2"), "domain": "r2.acme.test"})
    z1 = post(f"/region/{r1}/zone", {"name": "z1"})
    t1 = post("/team", {"name": unique("t1"), "users": [users["projectAdmin member"], users["user member"]]})
    t2 = post("/team", {"name": unique("t2"), "users": [users["projectAdmin non-member"], users["user non-member"]]})
    p1 = post("/project", {"name": unique("p1"), "teams": [t1], "regions": [r1]})
    post("/project", {"name": unique("p2"), "teams": [t2], "regions": [r2]})
    member = users["user member"]

    def member_token():
        status, doc, _ = http(kahuna, "PATCH", f"/user/{member}/token", key=MASTER_KEY)
        assert status == 200
        return doc["id"]

    members = {"projectAdmin member", "user member"}
    standing = {"regionId": r1, "zoneId": z1, "projectId": p1, "teamId": t1, "userId": member}
    related = {"regionId": members, "zoneId": members, "projectId": members, "teamId": members,
               "userId": {"user member"}, "tokenId": {"user member"}}
    victims = {  # fresh objects with the same relation to the callers, for DELETE routes
        "regionId": lambda: post("/region", {"name": unique("v"), "domain": "v.acme.test"}),
        "zoneId": lambda: post(f"/region/{r1}/zone", {"name": unique("vz")}),
        "projectId": lambda: post("/project", {"name": unique("vp"), "teams": [t1], "regions": [r1]}),
        "teamId": lambda: post("/team", {"name": unique("vt"), "users": sorted(
            users[c] for c in members)}),
        "userId": lambda: post("/user", {"name": "victim", "email": unique_email("v"), "role": "user"}),
        "tokenId": member_token,
    }

    headers = {}
    for caller in ROLE:
        headers[caller] = {"Authorization": f"Bearer {login(kahuna, *passwords[caller])}"}
    revoked = login(kahuna, *passwords["user member"])
    assert http(kahuna, "POST", "/logout", token=revoked)[0] == 204
    live = jwt_claims(login(kahuna, *passwords["user member"]))
    headers.update({
        "anonymous": {},
        "expired JWT": {"Authorization": f"Bearer {forge_jwt({**live, 'exp': int(time.time()) - 5})}"},
        "revoked JWT": {"Authorization": f"Bearer {revoked}"},
        "bad key": {"X-API-Key": "".join(pysecrets.choice("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789")
                                         for _ in range(64))},
    })
    return {"standing": standing, "related": related, "victims": victims, "headers": headers,
            "member_token": member_token}


def test_every_served_route_comes_through_the_table_with_a_known_rule():
    app, routes = production_routes()
    assert set(policy.RULES) == EXPECTED_RULES, "a rule was added or removed: say what it means here"
    declared = {(r.prefix + r.path.replace("{", "<").replace("}", ">"), r.method) for r in routes}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (rule.rule, method) in declared, f"{method} {rule.rule} bypasses the route table"
    for route in routes:
        assert route.rule in policy.RULES
        if route.target is not None:
            assert route.target in route.params


def test_a_route_cannot_be_registered_without_a_known_rule():
    from quart_trio import QuartTrio

    from kahuna.api.routes import RouteTable

    table = RouteTable(QuartTrio("t"), authenticate=None)

    async def handler(principal):
        return None

    for rule in ("", None, "everyone", "Admin"):
        with pytest.raises(ValueError):
            table.add("/thing", "GET", rule, handler, name="thing")
    with pytest.raises(ValueError):  # an object rule needs a path parameter that names a kind
        table.add("/thing/{thingId}", "GET", "project", handler, name="thing", target="thingId")
    assert table.routes == []


def test_refusals_reveal_nothing(kahuna, world):
    """A hidden object and an unknown id answer the very same body."""
    headers = world["headers"]["user non-member"]
    project = world["standing"]["projectId"]
    hidden = http(kahuna, "GET", f"/project/{project}", headers=headers)
    unknown = http(kahuna, "GET", f"/project/{UNKNOWN_ID}", headers=headers)
    assert hidden[0] == unknown[0] == 404
    assert hidden[1]["reason"].replace(project, "ID") == unknown[1]["reason"].replace(UNKNOWN_ID, "ID")


def test_a_refused_request_with_a_body_leaves_the_connection_usable(kahuna, world):
    """A refusal answered before the body was read must not stall the next request on the same
    keep-alive connection (the official client reuses its connections)."""
    pool = urllib3.PoolManager(retries=False, timeout=5, maxsize=1)
    team = world["standing"]["teamId"]
    for n in range(30):
        refused = pool.request("PUT", f"{kahuna.api}/team/{team}", body=b'{"name": "x"}',
                               headers={"Content-Type": "application/json", **world["headers"]["user member"]})
        assert refused.status == 403
        assert pool.request("GET", f"{kahuna.api}/team/{team}", headers=world["headers"]["user member"]).status == 200
    assert len(pool.pools) == 1 and pool.connection_from_url(kahuna.api).num_connections == 1


def test_every_route_for_every_caller(kahuna, world):
    _, routes = production_routes()
    standing, related, victims, headers = (world["standing"], world["related"], world["victims"],
                                           world["headers"])
    known = set(standing) | {"tokenId"}
    pool = urllib3.PoolManager(retries=False, timeout=10)
    # logout last: it ends the session the later requests of that caller need
    ordered = sorted(routes, key=lambda r: r.path == "/logout")
    failures, checked = [], 0
    for route in ordered:
        for caller in CALLERS:
            want = expected(route, caller, related, known)
            path = route.path
            for param in route.params:
                if param not in known:
                    value = UNKNOWN_ID
                elif route.method == "DELETE" or param == "tokenId":
                    value = victims[param]()
                else:
                    value = standing[param]
                path = path.replace("{" + param + "}", value)
            body = None
            hdrs = dict(headers[caller])
            if route.method in ("POST", "PUT"):
                body = b'{"__probe__": 1}'
                hdrs["Content-Type"] = "application/json"
            resp = pool.request(route.method, kahuna.url + route.prefix + path, body=body, headers=hdrs)
            checked += 1
            if not matches(resp.status, want):
                failures.append(f"{route.method} {route.prefix}{route.path} [{route.rule}] as {caller}: "
                                f"got {resp.status}, want {want}: {resp.data[:120]!r}")
            elif resp.status in (401, 403, 404):
                assert resp.headers["Content-Type"].startswith("application/json")
    assert not failures, f"{len(failures)} of {checked} answers differ:\n" + "\n".join(failures)
    assert checked == len(routes) * len(CALLERS)
