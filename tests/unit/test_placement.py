"""Placement: upstream's score plus what upstream forgets (capacity, agents, maintenance,
Kwarantine), deterministic ties, and refusals that say why."""

import pytest

from kahuna.orchestrator.placement import (DEFAULT_METHODS, GiB, Candidate, Kwarantine, NoEligibleHost,
                                           NoHostCapacity, PlacementRequest, candidate_from_kaktus, choose_host,
                                           is_sibling,
                                           levenshtein, score, successor)
from kahuna.resources.errors import DomainError


def host(name, **kw):
    base = dict(id=f"id-{name}", name=name, zone="zid-1", zone_name="z1", connected=True,
                methods=DEFAULT_METHODS | {"NodeCapabilities"}, cpu_threads=8, memory=32 * GiB,
                overcommit_cpu=1, overcommit_memory=1)
    base.update(kw)
    return Candidate(**base)


def req(**kw):
    base = dict(name="web-1", vcpus=2, memory=4 * GiB, scope="zone z1")
    base.update(kw)
    return PlacementRequest(**base)


def test_least_used_wins():
    busy = host("k1", used_vcpus=6, used_memory=12 * GiB, used_instances=3)
    idle = host("k2", used_vcpus=1, used_memory=1 * GiB, used_instances=1)
    assert choose_host(req(), [busy, idle]) is idle
    assert score(req(), busy) == 2 * 3 + 6 + 12 and score(req(), idle) == 2 + 1 + 1


def test_ties_are_deterministic_by_name_then_id():
    a, b, c = host("k-b", id="2"), host("k-a", id="9"), host("k-a", id="1")
    for order in ([a, b, c], [c, b, a], [b, a, c]):
        assert choose_host(req(), order) is c


def test_sibling_names_spread():
    with_sibling = host("k1", instance_names=("web-2",))
    empty_but_busier = host("k2", used_vcpus=4, used_instances=2)
    assert choose_host(req(name="web-1"), [with_sibling, empty_but_busier]) is empty_but_busier
    assert score(req(name="web-1"), with_sibling) == 1000
    assert score(req(name="web-1"), host("k3", instance_names=("web-2", "web-0", "db-1"))) == 2000


def test_sibling_rules():
    assert [successor(s) for s in ("web-1", "web-9", "az", "zz", "a9", "99", "ZZZ9999", "***")] == \
        ["web-2", "wec-0", "ba", "aaa", "b0", "100", "AAAA0000", "**+"]
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "ab") == 2
    assert is_sibling("web-1", "web-2") and is_sibling("web-2", "web-1") and is_sibling("web-1", "web-1")
    assert is_sibling("app", "apps") and not is_sibling("web-1", "db-1")


def test_capacity_uses_overcommit_and_usage():
    small = host("k1", cpu_threads=4, overcommit_cpu=2, used_vcpus=6)  # 8 - 6 = 2 free
    assert choose_host(req(vcpus=2), [small]) is small
    with pytest.raises(NoHostCapacity) as e:
        choose_host(req(vcpus=8), [small, host("k2", cpu_threads=4, used_vcpus=1)])
    assert e.value.status == 507 and isinstance(e.value, DomainError)
    assert e.value.reason == "no Kaktus in zone z1 has 8 free vCPUs (k1: 2 free vCPUs; k2: 3 free vCPUs)"


def test_memory_capacity():
    k = host("k1", memory=16 * GiB, overcommit_memory=2, used_memory=30 * GiB)  # 2 GiB free
    with pytest.raises(NoHostCapacity, match=r"no Kaktus in zone z1 has 4 GiB of free memory \(k1: 2 GiB free memory\)"):
        choose_host(req(), [k])
    assert choose_host(req(memory=2 * GiB), [k]) is k


def test_full_host_never_wins_even_with_the_best_score():
    full = host("k1", cpu_threads=2, used_vcpus=2)  # low score, no room
    other = host("k2", used_vcpus=5, used_instances=5)
    assert choose_host(req(), [full, other]) is other


def test_maintenance_disconnected_and_missing_methods_are_skipped():
    maint = host("k1", maintenance=True)
    down = host("k2", connected=False)
    old_agent = host("k3", methods=frozenset({"CreateInstance"}))
    unknown_caps = host("k4", cpu_threads=0, memory=0)
    ok = host("k5", used_vcpus=6, used_instances=10)
    assert choose_host(req(), [maint, down, old_agent, unknown_caps, ok]) is ok
    with pytest.raises(NoEligibleHost) as e:
        choose_host(req(), [maint, down, old_agent, unknown_caps])
    err = e.value
    assert err.status == 503 and not isinstance(err, NoHostCapacity)
    assert err.reason.startswith("no eligible Kaktus in zone z1 for web-1 (2 vCPUs, 4 GiB)")
    for text in ("k1: in maintenance", "k2: no connected agent", "k3: its agent does not offer InstanceOperation",
                 "k4: capabilities not known yet"):
        assert text in err.reason


def test_mixed_full_and_down_is_503():
    with pytest.raises(NoEligibleHost) as e:
        choose_host(req(vcpus=8), [host("k1", connected=False), host("k2", cpu_threads=4)])
    assert e.value.status == 503 and "k2: 4 free vCPUs" in e.value.reason


def test_no_candidates():
    with pytest.raises(NoEligibleHost, match="no Kaktus in zone z1"):
        choose_host(req(), [])


def test_kwarantine_host_policy():
    k1, k2 = host("k1"), host("k2", used_vcpus=4, used_instances=4)
    group = Kwarantine(name="web", policy="host", hosts=frozenset({"id-k1"}), zones=frozenset({"zid-1"}))
    assert choose_host(req(kwarantines=(group,)), [k1, k2]) is k2  # k1 holds another member
    with pytest.raises(NoHostCapacity) as e:
        choose_host(req(kwarantines=(group,)), [k1])
    assert e.value.reason == ("every Kaktus in zone z1 is excluded by anti-affinity "
                              "(k1: Kwarantine web (host) has another member there)")


def test_kwarantine_zone_policy_region_scope():
    a1 = host("a1", zone="zid-a", zone_name="za")
    a2 = host("a2", zone="zid-a", zone_name="za")
    b1 = host("b1", zone="zid-b", zone_name="zb", used_vcpus=6, used_instances=6)
    group = Kwarantine(name="db", policy="zone", hosts=frozenset({"id-a2"}), zones=frozenset({"zid-a"}))
    r = req(scope="region eu", kwarantines=(group,))
    assert choose_host(r, [a1, a2, b1]) is b1  # a1 is free but in a zone holding a member
    with pytest.raises(NoHostCapacity, match="in zone za"):
        choose_host(r, [a1, a2])


def test_several_kwarantines_and_explicit_exclusions():
    hosts = [host(f"k{i}") for i in range(4)]
    groups = (Kwarantine("g1", "host", hosts=frozenset({"id-k0"})), Kwarantine("g2", "host", hosts=frozenset({"id-k1"})))
    assert choose_host(req(kwarantines=groups, exclude_hosts=frozenset({"id-k2"})), hosts).name == "k3"


def test_invalid_request():
    with pytest.raises(ValueError):
        choose_host(req(vcpus=0), [host("k1")])


def test_many_hosts_fast_and_message_bounded():
    hosts = [host(f"k{i:03}", connected=False) for i in range(200)]
    with pytest.raises(NoEligibleHost) as e:
        choose_host(req(), hosts)
    assert "and 190 more" in e.value.reason and len(e.value.reason) < 600


def test_candidate_from_a_stored_kaktus():
    doc = {"_id": "k1id", "name": "k1", "zone_id": "zid-1", "maintenance": False,
           "capabilities": {"cpu": {"threads": 16}, "memory": 64 * GiB},
           "overcommit": {"cpu": 3, "memory": 2}, "usage": {"vcpus": 40, "memory": 100 * GiB, "instances": 9}}
    c = candidate_from_kaktus(doc, zone_name="z1", connected=True, methods=DEFAULT_METHODS,
                              instance_names=["web-2"])
    assert (c.vcpu_capacity, c.free_vcpus, c.memory_capacity, c.free_memory) == (48, 8, 128 * GiB, 28 * GiB)
    assert choose_host(req(vcpus=8, memory=28 * GiB), [c]) is c
    with pytest.raises(NoHostCapacity, match="k1: 8 free vCPUs"):
        choose_host(req(vcpus=9), [c])
    fresh = candidate_from_kaktus({"_id": "k2", "name": "k2"}, connected=True, methods=DEFAULT_METHODS)
    with pytest.raises(NoEligibleHost, match="capabilities not known yet"):
        choose_host(req(), [fresh])


def test_random_fleets_never_overcommit_and_ignore_listing_order():
    """500 random fleets: the winner is eligible, has room, and does not depend on list order."""
    import random

    rnd = random.Random(20261201)
    for _ in range(500):
        fleet = [host(f"k{i}", id=f"{rnd.randrange(1000):03}", zone=rnd.choice("ab"), zone_name="z",
                      connected=rnd.random() > 0.2, maintenance=rnd.random() < 0.2,
                      cpu_threads=rnd.choice([0, 4, 8]), overcommit_cpu=rnd.choice([1, 2, 3]),
                      used_vcpus=rnd.randrange(24), used_memory=rnd.randrange(40) * GiB,
                      used_instances=rnd.randrange(10),
                      instance_names=tuple(rnd.sample(["web-1", "web-2", "web-3", "db-1"], rnd.randrange(3))))
                 for i in range(rnd.randrange(1, 8))]
        r = req(name=rnd.choice(["web-2", "db-2", "x"]), vcpus=rnd.randrange(1, 9), memory=rnd.randrange(1, 9) * GiB,
                kwarantines=(Kwarantine("g", rnd.choice(["host", "zone"]), hosts=frozenset({fleet[0].id}),
                                        zones=frozenset({fleet[0].zone})),) if rnd.random() < 0.3 else ())
        try:
            chosen = choose_host(r, fleet)
        except NoEligibleHost as e:
            assert all(refusal_text in e.reason for refusal_text in [f"{fleet[0].name}:"])
            continue
        assert chosen.connected and not chosen.maintenance
        assert chosen.free_vcpus >= r.vcpus and chosen.free_memory >= r.memory
        rnd.shuffle(fleet)
        assert choose_host(r, fleet) is chosen
