"""Kawaii / IPsec / Konvey field validation and defaults, and IPsec PSK sealing (pure, no server)."""

from __future__ import annotations

import pytest

from kahuna.auth.principal import Principal
from kahuna.resources import appliance_fields as af
from kahuna.resources import ipsec_psk
from kahuna.resources.errors import Invalid, Missing

SECRET = "s" * 48


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises((Invalid, Missing)) as err:
        fn(*args, **kwargs)
    return err.value.reason if hasattr(err.value, "reason") else str(err.value)


@pytest.mark.parametrize("ports,normal", [("22", "22"), ("80-90", "80-90"), ("22, 80-90,443", "22,80-90,443"),
                                          ("1,65535", "1,65535"), ("7-7", "7-7")])
def test_port_lists(ports, normal):
    assert af.port_list(ports, "p") == normal


@pytest.mark.parametrize("ports", ["", "0", "65536", "90-80", "a", "22,", "1-2-3", "-5", "22;80", "100000"])
def test_bad_port_lists_name_the_field(ports):
    assert refused(af.firewall, {"ingress": [{"ports": "22"}, {"ports": ports}]}).startswith("firewall.ingress[1].ports")


def test_firewall_defaults_as_upstream():
    fw = af.firewall({"ingress": [{"ports": "22"}], "egress": [{"ports": "53", "protocol": "udp"}]})
    assert fw == {"ingress": [{"source": "0.0.0.0/0", "protocol": "tcp", "ports": "22"}],
                  "egress_policy": "accept",
                  "egress": [{"destination": "0.0.0.0/0", "protocol": "udp", "ports": "53"}]}
    assert af.firewall(None) == {"ingress": [], "egress_policy": "accept", "egress": []}


@pytest.mark.parametrize("body,where", [
    ({"ingress": [{"ports": "22", "source": "10.0.0.1/8"}]}, "firewall.ingress[0].source"),
    ({"ingress": [{"ports": "22", "source": "fd00::/8"}]}, "firewall.ingress[0].source"),
    ({"ingress": [{"ports": "22", "source": "nope"}]}, "firewall.ingress[0].source"),
    ({"ingress": [{"ports": "22", "protocol": "gre"}]}, "firewall.ingress[0].protocol"),
    ({"egress_policy": "reject"}, "firewall.egress_policy"),
    ({"egress": [{"ports": "1", "destination": "300.0.0.0/8"}]}, "firewall.egress[0].destination"),
    ({"ingress": [{"source": "0.0.0.0/0"}]}, "firewall.ingress[0].ports"),
    ({"ingress": [{"ports": "22", "extra": 1}]}, "firewall.ingress[0].extra"),
])
def test_firewall_refusals_name_the_field(body, where):
    assert refused(af.firewall, body).startswith(where)


def test_dnat_rules():
    assert af.dnat([{"destination": "10.0.0.5", "ports": "80,443"}]) == [
        {"destination": "10.0.0.5", "protocol": "tcp", "ports": "80,443"}]
    assert refused(af.dnat, [{"destination": "10.0.0.5", "ports": "80", "protocol": "icmp"}]).startswith("dnat[0].protocol")
    assert refused(af.dnat, [{"destination": "fd00::5", "ports": "80"}]).startswith("dnat[0].destination")
    assert refused(af.dnat, [{"ports": "80"}]).startswith("dnat[0].destination")


def test_vpc_peerings():
    out = af.vpc_peerings([{"subnet": "a" * 24, "ingress": [{"ports": "5432"}]}])
    assert out == [{"subnet": "a" * 24, "policy": "drop", "ingress": [{"protocol": "tcp", "ports": "5432"}],
                    "egress": []}]
    assert refused(af.vpc_peerings, [{"subnet": "x", "policy": "allow"}]).startswith("vpc_peerings[0].policy")
    ceph = af.peering_with_ceph(out[0])
    assert ceph["ingress"][0] == ceph["egress"][0] == {"protocol": "tcp", "ports": "111,2049,3300,6789,6800-7568"}


IPSEC = {"name": "to-paris", "remote_ip": "198.51.100.7", "remote_subnet": "10.200.0.0/16",
         "pre_shared_key": "correct horse battery", "phase1_dh_group_number": 14,
         "phase1_integrity_algorithm": "SHA256", "phase1_encryption_algorithm": "AES256",
         "phase2_dh_group_number": 19, "phase2_integrity_algorithm": "SHA512",
         "phase2_encryption_algorithm": "AES128"}


def test_ipsec_defaults_as_the_client():
    out = af.ipsec(dict(IPSEC))
    assert (out["dpd_timeout_action"], out["dpd_timeout"], out["start_action"], out["rekey_time"],
            out["phase1_lifetime"], out["phase2_lifetime"]) == ("restart", "240s", "start", "2h", "1h", "1h")
    assert out["firewall"] == {"ingress": []} and out["description"] == ""
    assert af.dh_group_name(out["phase1_dh_group_number"]) == "modp2048"
    assert af.dh_group_name(19) == "ecp256" and af.dh_group_name(5) == "modp1536"
    assert af.ipsec({"rekey_time": "4h"}, partial=True) == {"rekey_time": "4h"}


@pytest.mark.parametrize("change,where", [
    ({"phase1_dh_group_number": 3}, "phase1_dh_group_number"),
    ({"phase2_dh_group_number": "14"}, "phase2_dh_group_number"),
    ({"phase1_integrity_algorithm": "MD5"}, "phase1_integrity_algorithm"),
    ({"phase2_encryption_algorithm": "DES"}, "phase2_encryption_algorithm"),
    ({"remote_ip": "198.51.100"}, "remote_ip"),
    ({"remote_subnet": "10.200.0.1/16"}, "remote_subnet"),
    ({"dpd_timeout": "soon"}, "dpd_timeout"),
    ({"start_action": "go"}, "start_action"),
    ({"pre_shared_key": "short"}, "pre_shared_key"),
    ({"firewall": {"ingress": [{"ports": "0"}]}}, "firewall.ingress[0].ports"),
])
def test_ipsec_refusals_name_the_field(change, where):
    assert refused(af.ipsec, {**IPSEC, **change}).startswith(where)


def test_ipsec_required_fields_are_422():
    body = dict(IPSEC)
    del body["phase1_dh_group_number"]
    with pytest.raises(Missing) as err:
        af.ipsec(body)
    assert err.value.status == 422 and "phase1_dh_group_number" in str(err.value.reason)


def test_konvey_endpoints():
    eps = af.endpoints([{"name": "web", "port": 443, "protocol": "tcp",
                         "backends": {"hosts": ["10.0.0.5", "10.0.0.6"], "port": 8443}}])
    assert eps[0]["backends"] == {"hosts": ["10.0.0.5", "10.0.0.6"], "port": 8443}
    good = {"name": "web", "port": 443, "protocol": "tcp", "backends": {"hosts": ["10.0.0.5"], "port": 80}}
    for bad, where in (({**good, "port": 0}, "endpoints[0].port"), ({**good, "protocol": "sctp"}, "endpoints[0].protocol"),
                       ({**good, "backends": {"hosts": [], "port": 80}}, "endpoints[0].backends.hosts"),
                       ({**good, "backends": {"hosts": ["db.local"], "port": 80}}, "endpoints[0].backends.hosts[0]"),
                       ({**good, "backends": {"hosts": ["10.0.0.5"], "port": 70000}}, "endpoints[0].backends.port")):
        assert refused(af.endpoints, [bad]).startswith(where), bad
    assert refused(af.endpoints, [good, {**good, "name": "web2"}]).startswith("endpoints[1].port")
    assert refused(af.endpoints, [good, {**good, "port": 444}]).startswith("endpoints[1].name")


def test_psk_sealed_and_shown_only_to_its_admins():
    sealed = ipsec_psk.seal_psk(SECRET, "a" * 24, "correct horse battery")
    assert "correct" not in sealed
    doc = {"_id": "a" * 24, "pre_shared_key_sealed": sealed}
    assert ipsec_psk.open_psk(SECRET, doc) == "correct horse battery"
    assert ipsec_psk.open_psk(SECRET, {**doc, "_id": "b" * 24}) == ""  # copied onto another connection
    assert ipsec_psk.open_psk("t" * 48, doc) == ""
    project = {"_id": "p" * 24, "team_ids": ["t1"]}
    admin = Principal(role="superAdmin", via="master-key")
    member_admin = Principal(role="projectAdmin", via="jwt", user_id="u1", team_ids=frozenset({"t1"}))
    member_user = Principal(role="user", via="jwt", user_id="u2", team_ids=frozenset({"t1"}))
    outsider = Principal(role="projectAdmin", via="jwt", user_id="u3", team_ids=frozenset({"t2"}))
    assert ipsec_psk.psk_for(admin, project, SECRET, doc) == "correct horse battery"
    assert ipsec_psk.psk_for(member_admin, project, SECRET, doc) == "correct horse battery"
    assert ipsec_psk.psk_for(member_user, project, SECRET, doc) == ipsec_psk.MASK
    assert ipsec_psk.psk_for(outsider, project, SECRET, doc) == ipsec_psk.MASK
    assert ipsec_psk.psk_for(None, project, SECRET, doc) == ipsec_psk.MASK


def test_appliance_names_are_host_names_kept_apart():
    from kahuna.orchestrator.appliances import host_name

    assert host_name("kawaii-My Project", "Zone.A", "1") == "kawaii-my-project-zone-a-1"
    long_a, long_b = host_name("konvey", "p" * 80, "web", "2"), host_name("konvey", "p" * 80, "api", "2")
    assert len(long_a) == 63 and long_a.endswith("-2") and long_a != long_b
    assert host_name("", "--", "") == "appliance"
