"""GET /latest/meta-data over real HTTP against a Kahuna subprocess (issue 10).

Regions, zones, teams and projects are created through the official client. Instance, Kawaii,
IPsec and Konvey documents are written into the daemon's embedded store (SQLite WAL, next to the
running process) in the shapes the Kompute and appliance flows write (interfaces.md), so that the
boot storm and the scan have hundreds of instances at no cost; test_instances.py does the same
with real Komputes and appliances. Source addresses are loopback aliases (all of 127.0.0.0/8 is
local): the client socket is bound to the instance's "private" address. 127.0.0.2 is the only trusted proxy, so 127.0.0.1
is an untrusted peer whose X-Forwarded-For must be ignored.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import kowabunga
import pytest
import trio

from kahuna.resources.ipsec_psk import seal_psk
from kahuna.config import from_mapping
from kahuna.metadata.profile import BASE_FIELDS, IPSEC_FIELDS, KAWAII_FIELDS, KONVEY_FIELDS, RULE_FIELDS
from kahuna.auth.instance_tokens import instance_token, verify
from kahuna.store.base import new_id
from kahuna.store.embedded import EmbeddedStore
from tests.conftest import make_client
from tests.kahuna_proc import Kahuna, write_config
from tests.metadata.helpers import BASE_TYPES, VIP_TYPES, check_types, conn, get

SECRET = "metadata-test-server-secret-" + "s" * 32
PSK = "psk-" + uuid.uuid4().hex


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    work = tmp_path_factory.mktemp("kahuna-metadata")
    # no document cache: the test edits appliance documents next to the daemon (until the
    # kawaii/konvey kinds land, their API is not there to do it through)
    config = write_config(work / "kahuna.yml", work / "data", serverSecret=SECRET,
                          http={"trustedProxies": ["127.0.0.2"]}, cache={"enabled": False})
    with Kahuna(work, config) as k:
        yield k


def with_store(kahuna, fn) -> None:
    async def run():
        store = EmbeddedStore(kahuna.workdir / "data" / "kahuna.sqlite3")
        await store.open()
        try:
            await fn(store)
        finally:
            await store.close()
    trio.run(run)


def insert(kahuna, collection: str, docs: list[dict]) -> None:
    async def fn(store):
        for doc in docs:
            await store.insert(collection, doc)
    with_store(kahuna, fn)


def update(kahuna, collection: str, doc_id: str, fields: dict) -> None:
    async def fn(store):
        await store.update_fields(collection, doc_id, fields)
    with_store(kahuna, fn)


@pytest.fixture(scope="module")
def world(kahuna):
    with make_client(kahuna) as admin:
        region = kowabunga.RegionApi(admin).create_region(kowabunga.Region(name=unique("region"), domain="acme.test"))
        zone = kowabunga.RegionApi(admin).create_region_zone(region.id, kowabunga.Zone(name=unique("zone")))
        team = kowabunga.TeamApi(admin).create_team(kowabunga.Team(name=unique("team"), users=[]))
        projects = kowabunga.ProjectApi(admin)
        p1 = projects.create_project(kowabunga.Project(name=unique("p1"), domain="p1.acme.test", tags=["a"],
                                                       teams=[team.id], regions=[region.id]))
        p2 = projects.create_project(kowabunga.Project(name=unique("p2"), teams=[team.id], regions=[region.id]))
    kawaii_id, konvey_id, ipsec_id, peer_subnet, zone2 = new_id(), new_id(), new_id(), new_id(), new_id()

    def instance(name, project, ip, **extra):
        return {"_id": new_id(), "name": name, "description": f"{name} desc", "project_id": project,
                "zone_id": zone.id, "vcpus": 2, "memory": 4 << 30, "local_ip": ip,
                "metadata_generation": 0, "profile": "", "schema_version": 2, **extra}

    a = instance("vm-a", p1.id, "127.0.0.23")
    b = instance("vm-b", p1.id, "127.0.0.24")
    c = instance("vm-c", p2.id, "127.0.0.25")
    gw = instance("kawaii-p1-z-1", p1.id, "127.0.0.26", profile="kawaii", profile_id=kawaii_id)
    gw2 = instance("kawaii-p1-z2-1", p1.id, "127.0.0.29", profile="kawaii", profile_id=kawaii_id, zone_id=zone2)
    lb = instance("konvey-p1-z-1", p1.id, "127.0.0.27", profile="konvey", profile_id=konvey_id)
    # an appliance document of another project must not be served to this project's instance
    stray = instance("vm-stray", p2.id, "127.0.0.28", profile="kawaii", profile_id=kawaii_id)
    storm = [instance(f"storm-{i}", p2.id, f"10.9.{i // 250}.{i % 250 + 1}") for i in range(300)]
    insert(kahuna, "instance", [a, b, c, gw, gw2, lb, stray] + storm)
    insert(kahuna, "subnet", [{"_id": peer_subnet, "name": "ceph", "cidr": "10.70.0.0/24", "gateway": "10.70.0.1"}])
    insert(kahuna, "kawaii", [{"_id": kawaii_id, "name": "kawaii-p1", "project_id": p1.id,
                               "region_id": region.id, "public_vips": ["127.0.0.50"],
                               "virtual_ips": [{"zone_id": zone.id, "vrrp_id": 3, "interface": "ens3",
                                                "vip": "127.0.0.50", "priority": 100, "mask": 24, "public": True},
                                               {"zone_id": zone2, "vrrp_id": 4, "interface": "ens4",
                                                "vip": "10.1.0.3", "priority": 100, "mask": 26, "public": False}],
                               "firewall": {"ingress": [{"source": "0.0.0.0/0", "protocol": "tcp", "ports": "22"}],
                                            "egress_policy": "accept",
                                            "egress": [{"destination": "192.0.2.0/24", "protocol": "udp", "ports": "53"}]},
                               "dnat_rules": [{"destination": "127.0.0.23", "protocol": "tcp", "ports": "8080"}],
                               "vpc_peerings": [{"subnet": peer_subnet, "policy": "drop", "netip": [],
                                                 "ingress": [{"protocol": "tcp", "ports": "3300"}], "egress": []}],
                               "appliances": [{"zone_id": zone.id, "instance_id": gw["_id"]},
                                              {"zone_id": zone2, "instance_id": gw2["_id"]}]}])
    # APPLIANCE's shape: collection ipsec, the PSK sealed under the server secret
    insert(kahuna, "ipsec", [{
        "_id": ipsec_id, "kawaii_id": kawaii_id, "project_id": p1.id, "name": "to-hq", "ip": "127.0.0.50",
        "xfrm_id": 1, "remote_ip": "198.51.100.7", "remote_subnet": "10.200.0.0/16",
        "pre_shared_key_sealed": seal_psk(SECRET, ipsec_id, PSK), "dpd_timeout_action": "restart",
        "dpd_timeout": "240s", "start_action": "start", "rekey_time": "3h",
        "phase1_dh_group_number": 14, "phase2_dh_group_number": 19,
        "firewall": {"ingress": [{"source": "10.200.0.0/16", "protocol": "tcp", "ports": "443"}]}}])
    insert(kahuna, "konvey", [{"_id": konvey_id, "name": "web", "project_id": p1.id, "region_id": region.id,
                               "vip": "10.0.0.200", "vrrp_id": 7, "failover": False,
                               "appliances": [{"zone_id": zone.id, "instance_id": lb["_id"]}],
                               "endpoints": [{"name": "https", "port": 443, "protocol": "tcp",
                                              "backends": {"hosts": ["10.0.0.5", "10.0.0.6"], "port": 8443}}]}])
    return {"a": a, "b": b, "c": c, "gw": gw, "gw2": gw2, "lb": lb, "stray": stray, "storm": storm, "p1": p1.id,
            "kawaii_id": kawaii_id}


def token_of(doc) -> str:
    return instance_token(SECRET, doc["_id"], doc.get("metadata_generation", 0))


def by_token(doc, token=None) -> dict:
    return {"X-Kowabunga-Instance-Id": doc["_id"], "X-Kowabunga-Instance-Token": token or token_of(doc)}


def by_source(doc, declared=None) -> dict:
    return {"X-Kowabunga-Instance-Id": doc["_id"], "X-Kowabunga-Source-Ip": declared or doc["local_ip"]}


def test_token_unit():
    t = instance_token(SECRET, "abc", 0)
    assert verify(SECRET, "abc", 0, t) and not verify(SECRET, "abc", 1, t) and not verify("other", "abc", 0, t)
    assert t != instance_token(SECRET, "abc", 1) and "=" not in t and len(t) == 43


def test_instance_reads_its_own_profile_with_its_token(kahuna, world):
    status, body, headers = get(conn(kahuna), by_token(world["a"]))
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert set(body) == set(BASE_FIELDS)  # upstream's field list; no kawaii/konvey part
    check_types(body, BASE_TYPES)
    assert body["instance-id"] == world["a"]["_id"] and body["local-hostname"] == "vm-a"
    assert (body["vcpu"], body["mem_gb"], body["local-ipv4"], body["domain"]) == (2, 4, "127.0.0.23", "p1.acme.test")
    assert isinstance(body["tags"], list) and isinstance(body["peers"], list)
    assert body["monthly_cost"].endswith(" EUR")


def test_refusals_are_json_and_do_not_reveal_existence(kahuna, world):
    c = conn(kahuna)
    status, body, _ = get(c, {})
    assert status == 401 and body["status"] == 401 and body["error"] == "Unauthorized"
    wrong = get(c, by_token(world["a"], token_of(world["b"])))  # same project, another instance's token
    other_project = get(c, by_token(world["a"], token_of(world["c"])))
    unknown = get(c, by_token({"_id": new_id()}))
    garbage = get(c, by_token({"_id": "not-an-id"}))
    assert wrong[0] == other_project[0] == unknown[0] == garbage[0] == 403
    assert wrong[1] == unknown[1] == garbage[1] and "reason" in wrong[1]


def test_upstream_headers_only_from_the_real_source(kahuna, world):
    a = world["a"]
    status, body, _ = get(conn(kahuna, "127.0.0.23"), by_source(a))
    assert status == 200 and body["instance-id"] == a["_id"]
    assert get(conn(kahuna, "127.0.0.23"), by_source(a, "127.0.0.23:40000"))[0] == 200  # upstream cuts :port
    # right id and declared IP, but sent from another instance's address (same or other project)
    assert get(conn(kahuna, "127.0.0.24"), by_source(a))[0] == 403
    assert get(conn(kahuna, "127.0.0.25"), by_source(a))[0] == 403
    # its own address, but declaring another instance's id
    assert get(conn(kahuna, "127.0.0.23"), by_source(world["b"], "127.0.0.23"))[0] == 403
    # a spoofed X-Forwarded-For from an untrusted peer is ignored; from the trusted proxy it counts
    spoof = {**by_source(a), "X-Forwarded-For": "127.0.0.23"}
    assert get(conn(kahuna, "127.0.0.1"), spoof)[0] == 403
    assert get(conn(kahuna, "127.0.0.2"), spoof)[0] == 200
    assert get(conn(kahuna, "127.0.0.2"), {**by_source(a), "X-Forwarded-For": "127.0.0.23, 127.0.0.9"})[0] == 403
    # through its project's Kawaii NAT address; not another project's instance through it
    assert get(conn(kahuna, "127.0.0.50"), by_source(a))[0] == 200
    assert get(conn(kahuna, "127.0.0.50"), by_source(world["c"]))[0] == 403
    # nor for the appliance itself (its profile holds the PSKs): from its own address only
    assert get(conn(kahuna, "127.0.0.50"), by_source(world["gw"]))[0] == 403
    assert get(conn(kahuna, "127.0.0.26"), by_source(world["gw"]))[0] == 200


def test_kawaii_appliance_sees_its_psk_and_nobody_else_does(kahuna, world):
    status, body, _ = get(conn(kahuna), by_token(world["gw"]))
    assert status == 200 and set(body) == set(BASE_FIELDS) | {"kawaii"}
    kawaii = body["kawaii"]
    assert set(kawaii) == set(KAWAII_FIELDS)
    (ipsec,) = kawaii["ipsec_connections"]
    assert set(ipsec) == set(IPSEC_FIELDS)
    check_types(body, BASE_TYPES)
    assert isinstance(ipsec["xfrm_id"], int) and all(isinstance(kawaii[k], list) for k in (
        "peering_interfaces", "public_vip_addresses", "virtual_ips", "fw_input_rules", "fw_output_rules",
        "fw_forward_rules", "fw_nat_rules", "ipsec_connections"))
    assert body["peers"] == ["127.0.0.29"]  # the other zone's appliance
    assert ipsec["pre_shared_key"] == PSK and ipsec["remote_peer"] == "198.51.100.7"
    assert (ipsec["phase1_df_group"], ipsec["phase2_df_group"]) == ("modp2048", "ecp256")
    assert (ipsec["dpd_action"], ipsec["rekey"], ipsec["ingress_rules"][0]["ports"]) == ("restart", "3h", "443")
    assert kawaii["public_vip_addresses"] == ["127.0.0.50"] and kawaii["fw_input_rules"][0]["ports"] == "22"
    # master for its own zone's VIPs, backup for the other zone's; the other appliance the reverse
    assert kawaii["virtual_ips"] == [
        {"vrrp_id": 3, "interface": "ens3", "vip": "127.0.0.50", "priority": 150, "mask": 24, "public": True},
        {"vrrp_id": 4, "interface": "ens4", "vip": "10.1.0.3", "priority": 100, "mask": 26, "public": False}]
    other = get(conn(kahuna), by_token(world["gw2"]))[1]
    assert [v["priority"] for v in other["kawaii"]["virtual_ips"]] == [100, 150] and other["peers"] == ["127.0.0.26"]
    assert other["kawaii"]["ipsec_connections"][0]["pre_shared_key"] == PSK  # both appliances carry the tunnel
    # an egress rule is the exception to its policy (accept: the rule drops); DNAT per public VIP
    assert kawaii["fw_output_rules"] == [{"oifname": "ens3", "source_ip": "0.0.0.0/0",
                                          "destination_ip": "192.0.2.0/24", "protocol": "udp", "ports": "53",
                                          "action": "drop"}]
    assert kawaii["fw_nat_rules"] == [{"private_ip": "127.0.0.23", "public_ip": "127.0.0.50", "protocol": "tcp",
                                       "ports": "8080"}]
    # one VPC peering: its interface, and its ingress rule towards the peer (policy drop: accept)
    assert kawaii["peering_interfaces"] == ["ens5"]
    assert kawaii["fw_forward_rules"] == [{"iifname": "ens4", "oifname": "ens5", "destination_ip": "10.70.0.0/24",
                                           "direction": "out", "protocol": "tcp", "ports": "3300",
                                           "action": "accept"}]
    for r in kawaii["fw_input_rules"] + kawaii["fw_output_rules"] + kawaii["fw_forward_rules"]:
        assert set(r) <= set(RULE_FIELDS) and {"protocol", "ports", "action"} <= set(r)
    for who in ("a", "b", "c", "lb", "stray"):
        raw = json.dumps(get(conn(kahuna), by_token(world[who]))[1])
        assert PSK not in raw and "kawaii" not in json.loads(raw)
    assert PSK not in kahuna.new_stderr() and PSK not in kahuna.stdout()


def test_profile_follows_api_changes(kahuna, world):
    c = conn(kahuna)
    with make_client(kahuna) as admin:
        kowabunga.ProjectApi(admin).update_project(world["p1"], kowabunga.ProjectUpdate(tags=["blue", "green"]))
    assert get(c, by_token(world["a"]))[1]["tags"] == ["blue", "green"]
    with make_client(kahuna) as admin:
        kowabunga.ProjectApi(admin).update_project(world["p1"], kowabunga.ProjectUpdate(tags=["red"]))
    assert get(c, by_token(world["a"]))[1]["tags"] == ["red"]


def test_boot_storm_of_300_instances_passes(kahuna, world):
    """300 instances behind one NAT address (the trusted proxy's XFF), three reads each."""
    c = conn(kahuna, "127.0.0.60")
    started, throttled = time.monotonic(), 0
    for _ in range(3):
        for doc in world["storm"]:
            status, body, _ = get(c, by_token(doc))
            throttled += status == 429
            assert status in (200, 429) and (status == 429 or body["instance-id"] == doc["_id"])
    elapsed = time.monotonic() - started
    print(f"\nboot storm: 900 reads in {elapsed:.2f} s, {throttled} x 429")
    assert throttled == 0


def pipelined(kahuna, source: str, requests: list[bytes]) -> list[tuple[int, dict]]:
    """A raw keep-alive HTTP/1.1 client that pipelines: send a batch, read as many answers."""
    sock = socket.create_connection(("127.0.0.1", kahuna.http_port), timeout=20, source_address=(source, 0))
    out, buf = [], b""
    try:
        for i in range(0, len(requests), 200):
            batch = requests[i:i + 200]
            sock.sendall(b"".join(batch))
            for _ in batch:
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    assert chunk, f"connection closed after {len(out)} answers"
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
                length = int(headers.get("content-length", 0))
                while len(buf) < length:
                    buf += sock.recv(65536)
                buf = buf[length:]
                out.append((int(lines[0].split()[1]), headers))
    finally:
        sock.close()
    return out


def test_scan_of_random_ids_is_throttled(kahuna):
    """10,000 reads of random instance ids with made-up tokens, from one source address."""
    request = ("GET /latest/meta-data HTTP/1.1\r\nHost: kahuna\r\nX-Kowabunga-Instance-Id: {}\r\n"
               "X-Kowabunga-Instance-Token: " + "x" * 43 + "\r\n\r\n")
    started, answers = time.monotonic(), []
    for _ in range(10):  # hypercorn closes a keep-alive connection after 1000 requests
        answers += pipelined(kahuna, "127.0.0.99", [request.format(new_id()).encode() for _ in range(1000)])
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in answers]
    first_429 = statuses.index(429)
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"\nscan: {len(statuses)} requests in {elapsed:.2f} s, first 429 after {first_429}, {counts}")
    assert len(statuses) == 10_000 and first_429 <= 50 and set(statuses) <= {403, 429}
    assert counts[403] <= 50 + elapsed * 1 + 1  # refill 1/s: the scan learned nothing more
    assert int(answers[first_429][1]["retry-after"]) >= 1
    # the throttle is per address: an instance elsewhere still reads its profile
    assert get(conn(kahuna, "127.0.0.98"), by_token({"_id": new_id()}))[0] == 403


def test_token_rotates_with_the_generation(kahuna, world):
    b = world["b"]
    old = token_of(b)
    update(kahuna, "instance", b["_id"], {"metadata_generation": 1})
    assert get(conn(kahuna), by_token(b, old))[0] == 403
    assert get(conn(kahuna), by_token(b, instance_token(SECRET, b["_id"], 1)))[0] == 200


def test_konvey_appliance_profile(kahuna, world):
    status, body, _ = get(conn(kahuna), by_token(world["lb"]))
    assert status == 200 and set(body) == set(BASE_FIELDS) | {"konvey"}
    konvey = body["konvey"]
    assert set(konvey) == set(KONVEY_FIELDS)
    check_types(body, BASE_TYPES)
    for vip in konvey["virtual_ips"]:
        check_types(vip, VIP_TYPES)
    assert konvey["virtual_ips"] == [{"vrrp_id": 7, "interface": "ens4", "vip": "10.0.0.200", "priority": 150,
                                      "mask": 0, "public": False}]
    assert konvey["endpoints"] == [{"name": "https", "port": 443, "protocol": "tcp",
                                    "backends": [{"host": "10.0.0.5", "port": 8443}, {"host": "10.0.0.6", "port": 8443}]}]


def test_appliance_profile_follows_changes(kahuna, world):
    update(kahuna, "kawaii", world["kawaii_id"], {"firewall": {
        "ingress": [{"source": "192.0.2.0/24", "protocol": "udp", "ports": "51820"}], "egress_policy": "drop"}})
    kawaii = get(conn(kahuna), by_token(world["gw"]))[1]["kawaii"]
    assert [(r["source_ip"], r["protocol"], r["ports"]) for r in kawaii["fw_input_rules"]] == [("192.0.2.0/24", "udp", "51820")]
    assert kawaii["fw_output_default"] == "drop"


def test_legacy_headers_setting():
    assert from_mapping({})[0].metadata_legacy_headers is True
    config, unknown = from_mapping({"global": {"metadata": {"legacyHeaders": False}}})
    assert config.metadata_legacy_headers is False and not unknown


def test_one_instance_reading_in_a_loop_is_throttled(kahuna, world):
    c = conn(kahuna, "127.0.0.70")
    statuses = [get(c, by_token(world["c"]))[0] for _ in range(45)]
    assert statuses[:25] == [200] * 25 and 429 in statuses  # burst 30, refill 2/s
    status, body, headers = get(c, by_token(world["c"]))
    assert status == 429 and "instance" in body["reason"] and int(headers["retry-after"]) >= 1
