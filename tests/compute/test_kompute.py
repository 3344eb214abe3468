"""Komputes over real HTTP with the official client and an in-process simulated Kaktus: the whole
create (OS + data volumes, cloud-init ISO read back from the sim, domain XML with the disks and
the ISO, started), read, delete (nothing left), and a failure at each agent step undone."""

from __future__ import annotations

import json

import kowabunga
import pytest
from kowabunga.exceptions import ApiException

from agent.sim.model import GiB
from tests.conftest import make_client
from tests.infra.helpers import http, stored, wait_for


def _images(k):
    return {n for n in k.images("ssd") if n != "noble"}


def test_kompute_from_zero_and_back(kahuna, world, admin):
    k = world["kaktus"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects, komputes = kowabunga.ProjectApi(member), kowabunga.KomputeApi(member)
        vm = projects.create_project_zone_kompute(world["project"], world["zone"], kowabunga.Kompute(
            name="web1", memory=2 * GiB, vcpus=2, disk=10 * GiB, data_disk=5 * GiB))
        assert (vm.name, vm.vcpus, vm.memory, vm.disk, vm.data_disk) == ("web1", 2, 2 * GiB, 10 * GiB, 5 * GiB)
        assert _images(k) == {"web1-os", "web1-data", "web1-cloudinit"}
        assert k.image("ssd", "web1-os")["kind"] == "os" and k.image("ssd", "web1-data")["size"] == 5 * GiB
        files = k.iso_files("ssd", "web1-cloudinit")
        doc = stored(kahuna, "kompute", vm.id)
        instance = stored(kahuna, "instance", doc["instance_id"])
        assert f'instance-id: "{doc["instance_id"]}"' in files["meta-data"]
        assert "kowabunga_metadata_token" in files["meta-data"] and "web1" in files["meta-data"]
        domain = k.domain("web1")
        assert domain["state"] == "Running" and domain["vcpus"] == 2 and domain["memory"] == 2 * GiB
        assert [(d["device"], d["volume"]) for d in domain["disks"]] == [
            ("cdrom", "web1-cloudinit"), ("disk", "web1-os"), ("disk", "web1-data")] or \
            {d["volume"] for d in domain["disks"]} == {"web1-os", "web1-data", "web1-cloudinit"}
        assert instance["kaktus_id"] and instance["metadata_generation"] == 0
        usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
        assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (1, 2, 2 * GiB, 15 * GiB)
        assert komputes.list_komputes() == [vm.id]
        assert projects.list_project_zone_komputes(world["project"], world["zone"]) == [vm.id]
        assert komputes.read_kompute(vm.id).name == "web1"
        assert kowabunga.InstanceApi(member).list_instances() == [doc["instance_id"]]
        assert kowabunga.KaktusApi(admin).list_kaktus_instances(world["kaktus_id"]) == [doc["instance_id"]]
        assert komputes.delete_kompute(vm.id) is None
    assert _images(k) == set() and k.domain("web1") is None
    assert http(kahuna, "GET", "/instance")[1] == [] and http(kahuna, "GET", "/volume")[1] == []
    usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (0, 0, 0, 0)


@pytest.mark.parametrize("method,status", [("CreateOsVolume", 502), ("CreateRawVolume", 502),
                                           ("CreateIsoVolume", 502), ("CreateInstance", 502),
                                           ("InstanceOperation", 502)])
def test_a_failure_at_each_step_leaves_nothing(kahuna, world, admin, method, status):
    k = world["kaktus"]
    k.faults.fail(method, "rbd: ret=-5, Input/output error", times=1)
    code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                      {"name": "db1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB, "data_disk": GiB})
    assert code == status and "Input/output error" in body["reason"], body
    assert _images(k) == set() and k.domain("db1") is None
    for path in ("/kompute", "/instance", "/volume"):
        assert http(kahuna, "GET", path)[1] == []
    usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (0, 0, 0, 0)


def test_uefi_is_the_default_as_the_api_document_says(kahuna, world):
    """A raw body without `uefi` gets UEFI firmware (0.58's default true); `uefi: false` gets BIOS."""
    k = world["kaktus"]
    made = {}
    for name, extra in (("fw-default", {}), ("fw-bios", {"uefi": False})):
        code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                          {"name": name, "memory": GiB, "vcpus": 1, "disk": 4 * GiB, **extra})
        assert code == 201, body
        made[name] = body
    try:
        assert made["fw-default"]["uefi"] is True and made["fw-bios"]["uefi"] is False
        assert 'firmware="efi"' in k.domain("fw-default")["xml"]
        assert 'firmware="efi"' not in k.domain("fw-bios")["xml"]
    finally:
        for body in made.values():
            assert http(kahuna, "DELETE", f"/kompute/{body['id']}")[0] in (200, 204)


def test_quota_refuses_a_kompute_with_507(kahuna, world):
    code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                      {"name": "big", "memory": GiB, "vcpus": 1, "disk": 39 * GiB, "data_disk": 2 * GiB})
    assert code == 507 and "storage" in body["reason"]
    assert _images(world["kaktus"]) == set() and http(kahuna, "GET", "/kompute")[1] == []


def test_kompute_update_grows_disks_and_cpu_ram(kahuna, world, admin):
    k = world["kaktus"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        komputes = kowabunga.KomputeApi(member)
        vm = kowabunga.ProjectApi(member).create_project_zone_kompute(world["project"], world["zone"], kowabunga.Kompute(
            name="up1", memory=GiB, vcpus=1, disk=4 * GiB, data_disk=GiB))
        boots = k.domain("up1")["boots"]
        out = komputes.update_kompute(vm.id, kowabunga.KomputeUpdate(vcpus=2, memory=2 * GiB, disk=6 * GiB,
                                                                     data_disk=2 * GiB))
        assert (out.vcpus, out.memory, out.disk, out.data_disk) == (2, 2 * GiB, 6 * GiB, 2 * GiB)
        assert k.image("ssd", "up1-os")["size"] == 6 * GiB and k.image("ssd", "up1-data")["size"] == 2 * GiB
        domain = k.domain("up1")
        assert (domain["vcpus"], domain["memory"], domain["state"]) == (2, 2 * GiB, "Running")
        assert domain["boots"] > boots  # rebooted to take the new CPU/RAM
        usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
        assert (usage.vcpus, usage.memory, usage.storage) == (2, 2 * GiB, 8 * GiB)
        for bad in (kowabunga.KomputeUpdate(disk=GiB), kowabunga.KomputeUpdate(name="other")):
            with pytest.raises(ApiException) as err:
                komputes.update_kompute(vm.id, bad)
            assert err.value.status in (400, 422)
        komputes.delete_kompute(vm.id)
    usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (0, 0, 0, 0)


def test_a_kompute_grown_past_its_host_is_refused_and_nothing_moves(kahuna, world, admin):
    """The CPU/RAM growth of a Kompute needs room on its Kaktus, as an instance's does; refused,
    the domain, the document and the usages stay as they were."""
    k = world["kaktus"]
    code, vm = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                    {"name": "tight1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB})
    assert code == 201, vm
    try:
        host_before = stored(kahuna, "kaktus", world["kaktus_id"]).get("usage")
        code, body = http(kahuna, "PUT", f"/kompute/{vm['id']}", {**{f: vm[f] for f in ("name", "disk", "memory")},
                                                                  "vcpus": 1024})
        assert code in (503, 507) and "vcpus" in body["reason"], body
        assert k.domain("tight1")["vcpus"] == 1
        assert http(kahuna, "GET", f"/kompute/{vm['id']}")[1]["vcpus"] == 1
        assert stored(kahuna, "kaktus", world["kaktus_id"]).get("usage") == host_before
        usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
        assert (usage.instances, usage.vcpus, usage.memory) == (1, 1, GiB)
    finally:
        assert http(kahuna, "DELETE", f"/kompute/{vm['id']}")[0] == 200


def test_region_level_kompute_is_placed_in_a_zone(kahuna, world):
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects = kowabunga.ProjectApi(member)
        vm = projects.create_project_region_kompute(world["project"], world["region"], kowabunga.Kompute(
            name="rg1", memory=GiB, vcpus=1, disk=4 * GiB))
        doc = stored(kahuna, "kompute", vm.id)
        assert doc["zone_id"] == world["zone"] and doc["region_id"] == world["region"]
        assert projects.list_project_region_komputes(world["project"], world["region"]) == [vm.id]
        assert projects.list_project_zone_komputes(world["project"], world["zone"]) == [vm.id]
        assert projects.list_project_zone_instances(world["project"], world["zone"]) == [doc["instance_id"]]
        assert world["kaktus"].domain("rg1")["state"] == "Running"
        kowabunga.KomputeApi(member).delete_kompute(vm.id)
    assert world["kaktus"].domain("rg1") is None


def test_a_kaktus_in_maintenance_gets_no_new_kompute(kahuna, world, admin):
    kaktuses = kowabunga.KaktusApi(admin)
    assert kaktuses.enable_kaktus_maintenance(world["kaktus_id"]) is None
    try:
        code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                          {"name": "mt1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB})
        assert code == 503 and "maintenance" in body["reason"], body
        assert _images(world["kaktus"]) == set() and http(kahuna, "GET", "/kompute")[1] == []
    finally:
        kaktuses.disable_kaktus_maintenance(world["kaktus_id"])
    code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                      {"name": "mt1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB})
    assert code == 201
    assert http(kahuna, "DELETE", f"/kompute/{body['id']}")[0] == 200


def test_parallel_komputes_never_exceed_the_quota_and_usage_stays_exact(kahuna, world, admin):
    from concurrent.futures import ThreadPoolExecutor

    def create(i):
        return http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                    {"name": f"par{i}", "memory": GiB, "vcpus": 1, "disk": 8 * GiB})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(create, range(6)))
    made = [b["id"] for s, b in results if s == 201]
    assert len(made) == 5 and [s for s, _ in results if s != 201] == [507], results
    usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (5, 5, 5 * GiB, 40 * GiB)
    assert len(world["kaktus"].domains()) == 5
    with ThreadPoolExecutor(5) as pool:
        assert all(s == 200 for s, _ in pool.map(lambda i: http(kahuna, "DELETE", f"/kompute/{i}"), made))
    usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (0, 0, 0, 0)
    assert _images(world["kaktus"]) == set() and not world["kaktus"].domains()


def test_a_delete_the_agent_fails_goes_forward_once_it_answers(kahuna, world, admin):
    """A delete is not undone: the agent's error reaches the client, and the stored delete flow
    is finished by recovery in the same process as soon as the agent answers again."""
    k = world["kaktus"]
    code, body = http(kahuna, "POST", f"/project/{world['project']}/zone/{world['zone']}/kompute",
                      {"name": "del1", "memory": GiB, "vcpus": 1, "disk": 4 * GiB})
    assert code == 201, body
    k.faults.fail("DeleteVolume", "rbd: ret=-16, Device or resource busy", times=1)
    code, failed = http(kahuna, "DELETE", f"/kompute/{body['id']}")
    assert code == 502 and "Device or resource busy" in failed["reason"], failed
    wait_for(lambda: http(kahuna, "GET", f"/kompute/{body['id']}")[0] == 404, "the delete to be finished")
    assert _images(k) == set() and k.domain("del1") is None
    assert http(kahuna, "GET", "/instance")[1] == [] and http(kahuna, "GET", "/volume")[1] == []
    usage = kowabunga.ProjectApi(admin).read_project_usage(world["project"])
    assert (usage.instances, usage.vcpus, usage.memory, usage.storage) == (0, 0, 0, 0)
