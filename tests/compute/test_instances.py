"""Instances from existing volumes and adapters, over real HTTP with the official client and an
in-process simulated Kaktus: create (zone and region level; the domain with its disks and NIC,
the ISO, the volumes attached), the refusals (other project's or attached volume, no os volume,
quota), a failing agent step leaving nothing, update (CPU/RAM power-cycles the domain, a
description does not; a volume detached), delete (volumes detached, not deleted; usage back)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import kowabunga
import pytest
from kowabunga.exceptions import ApiException

from agent.sim.model import GiB
from tests.compute.crash import in_thread, kill_and_restart
from tests.conftest import make_client
from tests.infra.helpers import http, stored, wait_for


def _volume(kahuna, world, name: str, vtype: str, size: int, project: str | None = None) -> str:
    path = f"/project/{project or world['project']}/region/{world['region']}/volume?poolId={world['pool']}"
    if vtype == "os":
        path += f"&templateId={world['template']}"
    code, body = http(kahuna, "POST", path, {"name": name, "type": vtype, "size": size})
    assert code == 201, body
    return body["id"]


def _adapter(kahuna, subnet: str, name: str) -> dict:
    code, body = http(kahuna, "POST", f"/subnet/{subnet}/adapter?assignIP=true", {"name": name})
    assert code == 201, body
    return body


def _usage(admin, world):
    u = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    return (u.instances, u.vcpus, u.memory)


def test_instance_lifecycle(kahuna, world, admin):
    k = world["kaktus"]
    osv = _volume(kahuna, world, "vm1-root", "os", 4 * GiB)
    raw = _volume(kahuna, world, "vm1-data", "raw", GiB)
    nic = _adapter(kahuna, world["private"], "vm1-nic")
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects, instances = kowabunga.ProjectApi(member), kowabunga.InstanceApi(member)
        vm = projects.create_project_zone_instance(world["project"], world["zone"], kowabunga.Instance(
            name="vm1", memory=GiB, vcpus=1, volumes=[osv, raw], adapters=[nic["id"]]))
        assert (vm.name, vm.vcpus, vm.memory, vm.volumes, vm.adapters) == ("vm1", 1, GiB, [osv, raw], [nic["id"]])
        domain = k.domain("vm1")
        assert domain["state"] == "Running" and domain["autostart"]
        assert sorted((d["target"], d["volume"]) for d in domain["disks"] if d["device"] == "disk") == [
            ("vda", "vm1-root"), ("vdb", "vm1-data")]
        assert [n["mac"] for n in domain["nics"]] == [nic["mac"]] and domain["nics"][0]["bridge"] == "br-priv"
        doc = stored(kahuna, "instance", vm.id)
        assert doc["local_ip"] == nic["addresses"][0] and doc["kaktus_id"] == world["kaktus_id"]
        assert nic["addresses"][0] in k.iso_files("ssd", doc["iso_volume"])["network-config"]
        assert stored(kahuna, "volume", osv)["instance_id"] == vm.id == stored(kahuna, "volume", raw)["instance_id"]
        assert _usage(admin, world) == (1, 1, GiB)
        assert projects.list_project_zone_instances(world["project"], world["zone"]) == [vm.id]
        assert projects.list_project_region_instances(world["project"], world["region"]) == [vm.id]
        assert kowabunga.KaktusApi(admin).list_kaktus_instances(world["kaktus_id"]) == [vm.id]
        with pytest.raises(ApiException) as err:  # an attached volume is not deleted
            kowabunga.VolumeApi(member).delete_volume(raw)
        assert err.value.status == 409

        boots = k.domain("vm1")["boots"]
        assert instances.update_instance(vm.id, kowabunga.InstanceUpdate(description="web")).description == "web"
        assert k.domain("vm1")["boots"] == boots  # nothing to reboot for
        out = instances.update_instance(vm.id, kowabunga.InstanceUpdate(vcpus=2, memory=2 * GiB, volumes=[osv]))
        assert (out.vcpus, out.memory, out.volumes) == (2, 2 * GiB, [osv])
        domain = k.domain("vm1")
        assert (domain["vcpus"], domain["memory"], domain["state"]) == (2, 2 * GiB, "Running")
        assert domain["boots"] == boots + 1  # power-cycled to take the new hardware
        assert [d["volume"] for d in domain["disks"] if d["device"] == "disk"] == ["vm1-root"]
        assert stored(kahuna, "volume", raw)["instance_id"] == ""
        assert _usage(admin, world) == (1, 2, 2 * GiB)
        code, body = http(kahuna, "PUT", f"/instance/{vm.id}", {"vcpus": 1000})  # more than the host has
        assert code == 507 and "free vCPUs" in body["reason"], body
        assert stored(kahuna, "instance", vm.id)["vcpus"] == 2 and k.domain("vm1")["vcpus"] == 2
        assert _usage(admin, world) == (1, 2, 2 * GiB)
        kowabunga.InstanceApi(member).stop_instance(vm.id)
        instances.update_instance(vm.id, kowabunga.InstanceUpdate(vcpus=1))
        assert (k.domain("vm1")["vcpus"], k.domain("vm1")["state"]) == (1, "Shutoff")  # stays off

        assert instances.delete_instance(vm.id) is None
        assert k.domain("vm1") is None and k.image("ssd", doc["iso_volume"]) is None
        assert k.image("ssd", "vm1-root") is not None  # volumes are detached, not deleted
        assert stored(kahuna, "volume", osv)["instance_id"] == "" and _usage(admin, world) == (0, 0, 0)
        assert instances.list_instances() == []
        for vid in (osv, raw):
            kowabunga.VolumeApi(member).delete_volume(vid)
    assert http(kahuna, "DELETE", f"/adapter/{nic['id']}")[0] == 200


def test_instance_refusals_leave_nothing(kahuna, world, admin):
    k = world["kaktus"]
    osv = _volume(kahuna, world, "rf-root", "os", 4 * GiB)
    raw = _volume(kahuna, world, "rf-data", "raw", GiB)
    foreign = _volume(kahuna, world, "rf-foreign", "raw", GiB, project=world["other"])
    base = f"/project/{world['project']}/zone/{world['zone']}/instance"

    def create(**fields):
        return http(kahuna, "POST", base, {"name": "rf1", "memory": GiB, "vcpus": 1, **fields})

    code, body = create(volumes=[osv, "0" * 24])
    assert code == 422 and body["reason"].startswith("volumes[1]:"), body
    code, body = create(volumes=[osv, foreign])
    assert code == 422 and "volumes[1]" in body["reason"], body
    code, body = create(volumes=[raw])
    assert code == 422 and "os volume" in body["reason"], body
    code, body = create(volumes=[osv], adapters=["f" * 24])
    assert code == 422 and "adapters[0]" in body["reason"], body
    k.faults.fail("CreateInstance", "virError: internal error: qemu unexpectedly closed", times=1)
    code, body = create(volumes=[osv, raw])
    assert code == 502 and "qemu unexpectedly closed" in body["reason"], body
    assert http(kahuna, "GET", "/instance")[1] == [] and k.domain("rf1") is None
    assert {n for n in k.images("ssd") if n.endswith("-cloudinit")} == set()
    assert stored(kahuna, "volume", osv)["instance_id"] == "" and _usage(admin, world) == (0, 0, 0)

    with ThreadPoolExecutor(3) as pool:  # racing for one volume: one instance gets it
        results = list(pool.map(lambda i: http(kahuna, "POST", base, {
            "name": f"rf{i}", "memory": GiB, "vcpus": 1, "volumes": [osv]}), range(3)))
    made = [b for c, b in results if c == 201]
    assert len(made) == 1 and sorted(c for c, _ in results) == [201, 409, 409], results
    assert all("attached" in b["reason"] for c, b in results if c == 409)
    assert stored(kahuna, "volume", osv)["instance_id"] == made[0]["id"] and _usage(admin, world) == (1, 1, GiB)
    assert http(kahuna, "DELETE", f"/instance/{made[0]['id']}")[0] == 200
    for vid in (osv, raw, foreign):
        assert http(kahuna, "DELETE", f"/volume/{vid}")[0] == 200


def test_region_level_instance_and_quota(kahuna, world, admin):
    osv = _volume(kahuna, world, "rg-root", "os", 4 * GiB)
    projects = kowabunga.ProjectApi(admin)
    projects.update_project(world["project"], kowabunga.ProjectUpdate(
        quotas=kowabunga.ProjectResources(storage=40 * GiB, vcpus=2)))
    try:
        code, body = http(kahuna, "POST", f"/project/{world['project']}/region/{world['region']}/instance",
                          {"name": "rg1", "memory": GiB, "vcpus": 3, "volumes": [osv]})
        assert code == 507 and "vcpus" in body["reason"], body
        with make_client(kahuna, api_key=None, token=world["member"]) as member:
            vm = kowabunga.ProjectApi(member).create_project_region_instance(
                world["project"], world["region"], kowabunga.Instance(name="rg1", memory=GiB, vcpus=2, volumes=[osv]))
            doc = stored(kahuna, "instance", vm.id)
            assert (doc["zone_id"], doc["region_id"]) == (world["zone"], world["region"])
            assert kowabunga.ProjectApi(member).list_project_zone_instances(world["project"], world["zone"]) == [vm.id]
            code, body = http(kahuna, "PUT", f"/instance/{vm.id}", {"vcpus": 3})
            assert code == 507 and stored(kahuna, "instance", vm.id)["vcpus"] == 2
            kowabunga.InstanceApi(member).delete_instance(vm.id)
    finally:
        projects.update_project(world["project"], kowabunga.ProjectUpdate(
            quotas=kowabunga.ProjectResources(storage=40 * GiB)))
    assert http(kahuna, "DELETE", f"/volume/{osv}")[0] == 200


def test_a_komputes_instance_is_managed_through_its_kompute(kahuna, world):
    code, vm = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                    {"name": "kp1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB})
    assert code == 201, vm
    iid = stored(kahuna, "kompute", vm["id"])["instance_id"]
    for method, body in (("DELETE", None), ("PUT", {"vcpus": 2})):
        code, answer = http(kahuna, method, f"/instance/{iid}", body)
        assert code == 409 and "Kompute kp1" in answer["reason"], answer
    assert http(kahuna, "DELETE", f"/kompute/{vm['id']}")[0] == 200


def test_instance_dns_record_follows_its_private_address(kahuna, world, kiwi, corp):
    osv = _volume(kahuna, world, "dn-root", "os", 4 * GiB, project=corp["id"])
    first, second = (_adapter(kahuna, corp["subnet"], f"dn-nic{i}") for i in (1, 2))
    code, vm = http(kahuna, "POST", f"/project/{corp['id']}/zone/{world['zone']}/instance",
                    {"name": "dn1", "memory": GiB, "vcpus": 1, "volumes": [osv], "adapters": [first["id"]]})
    assert code == 201, vm
    assert kiwi.resolve("dn1.corp.test") == first["addresses"]
    code, out = http(kahuna, "PUT", f"/instance/{vm['id']}", {"adapters": [second["id"]]})
    assert code == 200 and out["adapters"] == [second["id"]], out
    assert kiwi.resolve("dn1.corp.test") == second["addresses"]
    assert [n["mac"] for n in world["kaktus"].domain("dn1")["nics"]] == [second["mac"]]
    iso = stored(kahuna, "instance", vm["id"])["iso_volume"]
    assert second["addresses"][0] in world["kaktus"].iso_files("ssd", iso)["network-config"]
    assert http(kahuna, "DELETE", f"/instance/{vm['id']}")[0] == 200
    assert kiwi.resolve("dn1.corp.test") == []
    for path in (f"/volume/{osv}", f"/adapter/{first['id']}", f"/adapter/{second['id']}"):
        assert http(kahuna, "DELETE", path)[0] == 200


def test_sigkill_during_an_instance_create_and_delete_is_recovered(kahuna, world, kiwi):
    """Killed once the agent did the work but before Kahuna heard back: the create is undone (no
    domain, no ISO, volume free, usage back), the delete is finished (volume free, document gone)."""
    k = world["kaktus"]
    new_root = _volume(kahuna, world, "sk-new", "os", 4 * GiB)
    old_root = _volume(kahuna, world, "sk-old", "os", 4 * GiB)
    code, old = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/instance",
                     {"name": "sk-old", "memory": GiB, "vcpus": 1, "volumes": [old_root]})
    assert code == 201, old
    k.faults.delay_reply("CreateInstance", 30.0, when=lambda p: p.get("Name") == "sk-new")
    k.faults.delay_reply("DeleteInstance", 30.0, when=lambda p: p.get("Name") == "sk-old")
    threads = [in_thread(http, kahuna, *call) for call in (
        ("POST", f"/project/{world['project']}/zone/{world['zone']}/instance",
         {"name": "sk-new", "memory": GiB, "vcpus": 1, "volumes": [new_root]}),
        ("DELETE", f"/instance/{old['id']}", None))]
    wait_for(lambda: k.domain("sk-new") and not k.domain("sk-old"), "the sim to define sk-new and undefine sk-old")
    kill_and_restart(kahuna, (k, kiwi), threads)

    def recovered():
        return (k.domain("sk-new") is None and not [n for n in k.images("ssd") if n.endswith("-cloudinit")]
                and stored(kahuna, "instance", old["id"]) is None and http(kahuna, "GET", "/instance")[1] == []
                and stored(kahuna, "volume", new_root)["instance_id"] == ""
                and stored(kahuna, "volume", old_root)["instance_id"] == ""
                and http(kahuna, "GET", f"/project/{world['project']}/usage")[1] == {
                    "vcpus": 0, "memory": 0, "storage": 8 * GiB, "instances": 0})
    wait_for(recovered, "the restarted Kahuna to undo the create and finish the delete", timeout=30)
    assert stored(kahuna, "kaktus", world["kaktus_id"])["usage"] == {"vcpus": 0, "memory": 0, "instances": 0}
    k.wait_connected()
    for vid in (new_root, old_root):
        assert http(kahuna, "DELETE", f"/volume/{vid}")[0] == 200


def test_instances_join_kwarantine_groups(kahuna, world):
    roots = [_volume(kahuna, world, f"kq{i}-root", "os", 4 * GiB) for i in (1, 2)]
    code, group = http(kahuna, "POST", f"/project/{world['project']}/kwarantine", {"name": "kq"})
    assert code == 201, group
    base = f"/project/{world['project']}/zone/{world['zone']}/instance"
    code, a = http(kahuna, "POST", base, {"name": "kq1", "memory": GiB, "vcpus": 1, "volumes": [roots[0]],
                                          "kwarantines": [group["id"]]})
    assert code == 201 and a["kwarantines"] == [group["id"]], a
    assert http(kahuna, "GET", f"/kwarantine/{group['id']}")[1]["instances"] == [a["id"]]
    code, body = http(kahuna, "POST", base, {"name": "kq2", "memory": GiB, "vcpus": 1, "volumes": [roots[1]],
                                             "kwarantines": [group["id"]]})
    assert code == 507 and "kq" in body["reason"], body  # the only Kaktus holds the other member
    assert stored(kahuna, "volume", roots[1])["instance_id"] == ""
    assert http(kahuna, "DELETE", f"/instance/{a['id']}")[0] == 200
    assert http(kahuna, "GET", f"/kwarantine/{group['id']}")[1]["instances"] == []
    for path in [f"/volume/{v}" for v in roots] + [f"/kwarantine/{group['id']}"]:
        assert http(kahuna, "DELETE", path)[0] == 200
