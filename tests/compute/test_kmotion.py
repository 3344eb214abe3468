"""kMotion over real HTTP with the official client and three simulated Kaktus (two in the world's
zone, one in a second zone of its region): live (the running domain migrated by libvirt to the
target's endpoint), cold (the power state kept, running or not), a failing target putting the
instance back on its source in its state, maintenance and Kwarantine refusing a target, the
zone/region elections, the usage moving between hosts, and the refusals of bad plans."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException

from agent.sim.model import GiB
from tests.compute.crash import in_thread, kill_and_restart
from tests.conftest import make_client
from tests.identity.helpers import identity_config
from tests.infra.helpers import CALL_TIMEOUT, agent_status, create_agents, http, stored, unique, wait_for
from tests.kahuna_proc import Kahuna

GRACE = 1.0  # global.kmotion.shutdownTimeout of this daemon: an ACPI-deaf guest is destroyed after it


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    """The compute daemon (tests.infra.helpers.tenant_kahuna's settings) with a short ACPI grace."""
    work = tmp_path_factory.mktemp("kmotion")
    config = identity_config(work, smtp_sink, ws={"callTimeout": CALL_TIMEOUT}, cache={"enabled": False},
                             kmotion={"shutdownTimeout": GRACE})
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


@pytest.fixture(scope="module")
def fleet(kahuna, world, admin):
    """{kaktus id: sim} for the world's Kaktus, a second one in its zone and a third in another
    zone of the region (`zone2`)."""
    zone2 = kowabunga.RegionApi(admin).create_region_zone(world["region"], kowabunga.Zone(name=unique("zone"))).id
    sims = {world["kaktus_id"]: world["kaktus"]}
    for zone, address in ((world["zone"], "10.0.0.12"), (zone2, "10.0.0.13")):
        agent = create_agents(kahuna, "Kaktus")[0]
        sim = world["host"].kaktus(agent["id"], agent["key"], f"ws://127.0.0.1:{kahuna.hub_port}/ws",
                                   libvirt_address=address)
        sim.wait_connected()
        wait_for(lambda: agent_status(kahuna, agent["id"])["connected"], "Kahuna to see the sim")
        node = kowabunga.ZoneApi(admin).create_zone_kaktus(zone, kowabunga.Kaktus(
            name=unique("kaktus"), agents=[agent["id"]], cpu_cost=kowabunga.Cost(price=0, currency="EUR"),
            memory_cost=kowabunga.Cost(price=0, currency="EUR")))
        wait_for(lambda: kowabunga.KaktusApi(admin).read_kaktus_caps(node.id).memory, "the Kaktus capabilities")
        sims[node.id] = sim
    return {"sims": sims, "zone2": zone2, "same_zone": list(sims)[1], "other_zone": list(sims)[2]}


def _kompute(kahuna, world, name: str, **fields) -> tuple[str, str]:
    code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                      {"name": name, "memory": GiB, "vcpus": 1, "disk": 2 * GiB, **fields})
    assert code == 201, body
    return body["id"], stored(kahuna, "kompute", body["id"])["instance_id"]


def _host_of(kahuna, iid: str) -> str:
    return stored(kahuna, "instance", iid)["kaktus_id"]


def _other_in_zone(world, fleet, kaktus_id: str) -> str:
    return fleet["same_zone"] if kaktus_id == world["kaktus_id"] else world["kaktus_id"]


def _usage(kahuna, kaktus_id: str) -> tuple[int, int, int]:
    u = stored(kahuna, "kaktus", kaktus_id).get("usage") or {}
    return (u.get("instances", 0), u.get("vcpus", 0), u.get("memory", 0))


def test_live_kmotion_of_a_kompute_moves_the_running_domain_and_the_usage(kahuna, world, fleet, admin):
    kid, iid = _kompute(kahuna, world, "lv1")
    source = _host_of(kahuna, iid)
    target = _other_in_zone(world, fleet, source)
    before = _usage(kahuna, source), _usage(kahuna, target)
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        komputes = kowabunga.KomputeApi(member)
        plan = komputes.plan_kompute_k_motion(kid, kowabunga.KMotionPlanRequest(destination="manual", kaktus=target))
        assert (plan.instance, plan.source, plan.target, plan.live) == (iid, source, target, True)
        boots = fleet["sims"][source].domain("lv1")["boots"]
        assert komputes.commit_kompute_k_motion(kid, kowabunga.KMotionCommitRequest(plan=plan.id)) is None
        domain = fleet["sims"][target].domain("lv1")
        assert fleet["sims"][source].domain("lv1") is None
        assert (domain["state"], domain["migrations"], domain["boots"]) == ("Running", 1, boots)  # never restarted
        assert domain["spice"]["listen"] == ("10.0.0.12" if target == fleet["same_zone"] else "10.0.0.11")
        assert _host_of(kahuna, iid) == target
        url = kowabunga.InstanceApi(member).read_instance_remote_connection(iid).url
        assert url.startswith("spice://" + domain["spice"]["listen"] + ":"), url
        assert iid in kowabunga.KaktusApi(admin).list_kaktus_instances(target)
        assert iid not in kowabunga.KaktusApi(admin).list_kaktus_instances(source)
        assert _usage(kahuna, source) == (before[0][0] - 1, before[0][1] - 1, before[0][2] - GiB)
        assert _usage(kahuna, target) == (before[1][0] + 1, before[1][1] + 1, before[1][2] + GiB)
        with pytest.raises(ApiException) as err:  # a plan is used once
            komputes.commit_kompute_k_motion(kid, kowabunga.KMotionCommitRequest(plan=plan.id))
        assert err.value.status == 422
        assert komputes.read_kompute_state(kid).state == "Running"
        komputes.delete_kompute(kid)
    assert fleet["sims"][target].domain("lv1") is None and _usage(kahuna, target) == before[1]


def test_cold_kmotion_keeps_the_power_state_and_a_failing_target_puts_it_back(kahuna, world, fleet, admin):
    kid, iid = _kompute(kahuna, world, "cd1")
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        komputes, instances = kowabunga.KomputeApi(member), kowabunga.InstanceApi(member)
        source = _host_of(kahuna, iid)
        target = _other_in_zone(world, fleet, source)
        # a failing target: back on the source, running as it was, usage unchanged
        usage = _usage(kahuna, source), _usage(kahuna, target)
        fleet["sims"][target].faults.fail("CreateInstance", "virError: unsupported configuration", times=1)
        plan = instances.plan_instance_k_motion(iid, kowabunga.KMotionPlanRequest(
            destination="manual", kaktus=target, live=False))
        with pytest.raises(ApiException) as err:
            instances.commit_instance_k_motion(iid, kowabunga.KMotionCommitRequest(plan=plan.id))
        assert err.value.status == 502 and "unsupported configuration" in err.value.body
        assert fleet["sims"][target].domain("cd1") is None
        assert fleet["sims"][source].domain("cd1")["state"] == "Running"
        assert _host_of(kahuna, iid) == source and (_usage(kahuna, source), _usage(kahuna, target)) == usage
        assert http(kahuna, "GET", "/instance")[1] == [iid]
        # cold, running: shut down, re-created on the target, running again
        plan = instances.plan_instance_k_motion(iid, kowabunga.KMotionPlanRequest(
            destination="manual", kaktus=target, live=False))
        instances.commit_instance_k_motion(iid, kowabunga.KMotionCommitRequest(plan=plan.id))
        domain = fleet["sims"][target].domain("cd1")
        assert (domain["state"], domain["migrations"]) == ("Running", 0)
        assert fleet["sims"][source].domain("cd1") is None and _host_of(kahuna, iid) == target
        ops = [p["Action"] for m, p, _ in fleet["sims"][source].calls("InstanceOperation") if p.get("Name") == "cd1"]
        assert ops[-1] == 5  # an ACPI shutdown, enough for this guest
        # a guest deaf to ACPI: destroyed after the grace, then running on the other host
        world["host"].run_sync(lambda: setattr(fleet["sims"][target].model.instances["cd1"], "acpi", False))
        plan = instances.plan_instance_k_motion(iid, kowabunga.KMotionPlanRequest(
            destination="manual", kaktus=source, live=False))
        instances.commit_instance_k_motion(iid, kowabunga.KMotionCommitRequest(plan=plan.id))
        ops = [p["Action"] for m, p, _ in fleet["sims"][target].calls("InstanceOperation") if p.get("Name") == "cd1"]
        assert ops[-2:] == [5, 4] and fleet["sims"][source].domain("cd1")["state"] == "Running"
        assert _host_of(kahuna, iid) == source
        # cold, stopped (a live plan of a stopped domain is cold): it stays off, in the other zone
        komputes.stop_kompute(kid)
        plan = komputes.plan_kompute_k_motion(kid, kowabunga.KMotionPlanRequest(
            destination="manual", kaktus=fleet["other_zone"]))
        komputes.commit_kompute_k_motion(kid, kowabunga.KMotionCommitRequest(plan=plan.id))
        assert fleet["sims"][fleet["other_zone"]].domain("cd1")["state"] == "Shutoff"
        assert stored(kahuna, "kompute", kid)["zone_id"] == fleet["zone2"]
        assert stored(kahuna, "instance", iid)["zone_id"] == fleet["zone2"]
        assert kowabunga.ProjectApi(member).list_project_zone_komputes(world["project"], fleet["zone2"]) == [kid]
        komputes.delete_kompute(kid)
    assert not any(sim.domain("cd1") for sim in fleet["sims"].values())


def test_maintenance_and_kwarantine_refuse_a_target(kahuna, world, fleet, admin):
    kaktuses = kowabunga.KaktusApi(admin)
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        group = kowabunga.ProjectApi(member).create_project_kwarantine(
            world["project"], kowabunga.Kwarantine(name=unique("spread")))
        a, a_iid = _kompute(kahuna, world, "kw1", kwarantines=[group.id])
        b, b_iid = _kompute(kahuna, world, "kw2", kwarantines=[group.id])
        assert _host_of(kahuna, a_iid) != _host_of(kahuna, b_iid)
        code, body = http(kahuna, "POST", f"/kompute/{b}/kmotion/plan",
                          {"destination": "manual", "kaktus": _host_of(kahuna, a_iid)})
        assert code == 409 and "Kwarantine" in body["reason"], body
        # zone election: the only other host of the zone holds the other member
        code, body = http(kahuna, "POST", f"/kompute/{b}/kmotion/plan", {"destination": "zone"})
        assert code == 507 and "anti-affinity" in body["reason"], body
        code, plan = http(kahuna, "POST", f"/kompute/{b}/kmotion/plan", {"destination": "region"})
        assert code == 201 and plan["target"] == fleet["other_zone"], plan
        kaktuses.enable_kaktus_maintenance(fleet["other_zone"])
        try:
            code, body = http(kahuna, "PATCH", f"/kompute/{b}/kmotion/commit", {"plan": plan["id"]})
            assert code == 409 and "maintenance" in body["reason"], body
            code, body = http(kahuna, "POST", f"/kompute/{b}/kmotion/plan",
                              {"destination": "manual", "kaktus": fleet["other_zone"]})
            assert code == 409 and "maintenance" in body["reason"], body
            code, body = http(kahuna, "POST", f"/kompute/{b}/kmotion/plan", {"destination": "auto"})
            assert code == 503 and "maintenance" in body["reason"], body
        finally:
            kaktuses.disable_kaktus_maintenance(fleet["other_zone"])
        assert _host_of(kahuna, b_iid) != fleet["other_zone"]
        for kid in (a, b):
            kowabunga.KomputeApi(member).delete_kompute(kid)
        kowabunga.KwarantineApi(member).delete_kwarantine(group.id)


def test_bad_plans_and_commits(kahuna, world, fleet):
    kid, iid = _kompute(kahuna, world, "bd1")
    other, other_iid = _kompute(kahuna, world, "bd2")
    here = _host_of(kahuna, iid)
    cases = [({"destination": "elsewhere"}, 400, "destination"),
             ({"destination": "manual"}, 400, "kaktus"),
             ({"destination": "manual", "kaktus": "0" * 24}, 422, "kaktus"),
             ({"destination": "manual", "kaktus": here}, 409, "already hosts")]
    for body, status, word in cases:
        code, answer = http(kahuna, "POST", f"/instance/{iid}/kmotion/plan", body)
        assert code == status and word in answer["reason"], (body, answer)
    code, plan = http(kahuna, "POST", f"/instance/{other_iid}/kmotion/plan", {})
    assert code == 201 and plan["live"] is True and plan["source"] == _host_of(kahuna, other_iid)
    for body, status in (({"plan": plan["id"]}, 422), ({"plan": "0" * 24}, 422), ({}, 400)):
        code, answer = http(kahuna, "PATCH", f"/instance/{iid}/kmotion/commit", body)
        assert code == status and "plan" in answer["reason"], answer
    assert http(kahuna, "PUT", f"/kompute/{kid}", {"kmotion_enabled": False})[0] == 200
    code, answer = http(kahuna, "POST", f"/kompute/{kid}/kmotion/plan", {})
    assert code == 422 and "kmotion_enabled" in answer["reason"], answer
    code, answer = http(kahuna, "POST", f"/instance/{iid}/kmotion/plan", {})  # its instance neither
    assert code == 422 and "kmotion_enabled" in answer["reason"], answer
    code, answer = http(kahuna, "POST", f"/instance/{iid}/kmotion/plan", {}, key=None, token=world["outsider"])
    assert code == 404
    for k in (kid, other):
        assert http(kahuna, "DELETE", f"/kompute/{k}")[0] == 200


def test_sigkill_during_a_kmotion_is_recovered_at_restart(kahuna, world, fleet):
    """A cold kMotion killed once the target defined the domain goes back to its source, running;
    a live one killed once libvirt migrated stays on the target; the usage matches the domains."""
    sims = fleet["sims"]
    moves = {}
    for name, live in (("sk1", False), ("sk2", True)):
        kid, iid = _kompute(kahuna, world, name)
        source = _host_of(kahuna, iid)
        code, plan = http(kahuna, "POST", f"/instance/{iid}/kmotion/plan",
                          {"destination": "manual", "kaktus": _other_in_zone(world, fleet, source), "live": live})
        assert code == 201, plan
        moves[name] = (kid, iid, plan)
    _, _, cold = moves["sk1"]
    _, _, live = moves["sk2"]
    sims[cold["target"]].faults.delay_reply("CreateInstance", 30.0, when=lambda p: p.get("Name") == "sk1")
    sims[live["source"]].faults.delay_reply("MigrateInstance", 30.0, when=lambda p: p.get("Name") == "sk2")
    threads = [in_thread(http, kahuna, "PATCH", f"/instance/{iid}/kmotion/commit", {"plan": plan["id"]})
               for _, iid, plan in moves.values()]
    wait_for(lambda: sims[cold["target"]].domain("sk1") and sims[live["target"]].domain("sk2"),
             "the target to define sk1 and libvirt to migrate sk2")
    kill_and_restart(kahuna, sims.values(), threads)

    def recovered():
        return (sims[cold["target"]].domain("sk1") is None and sims[live["source"]].domain("sk2") is None
                and (sims[cold["source"]].domain("sk1") or {}).get("state") == "Running"
                and _host_of(kahuna, moves["sk1"][1]) == cold["source"]
                and _host_of(kahuna, moves["sk2"][1]) == live["target"]
                and all(_usage(kahuna, kaktus_id) == (len(sim.domains()), len(sim.domains()), len(sim.domains()) * GiB)
                        for kaktus_id, sim in sims.items()))  # every Kompute here is 1 vCPU, 1 GiB
    wait_for(recovered, "the restarted Kahuna to put sk1 back and sk2 on its target, usage matching", timeout=30)
    assert sims[live["target"]].domain("sk2")["state"] == "Running"
    for sim in sims.values():
        sim.wait_connected()
    for kid, _, _ in moves.values():
        assert http(kahuna, "DELETE", f"/kompute/{kid}")[0] == 200
