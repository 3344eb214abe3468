"""Kompute and instance state, power actions (the real resulting state on the sim; stop of a
stopped domain is a no-op) and the SPICE connect URL, through the official client."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import NotFoundException

from agent.sim.model import GiB
from tests.conftest import make_client
from tests.infra.helpers import stored


def test_power_actions_state_and_connect(kahuna, world):
    k = world["kaktus"]
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        komputes, instances = kowabunga.KomputeApi(member), kowabunga.InstanceApi(member)
        vm = kowabunga.ProjectApi(member).create_project_zone_kompute(world["project"], world["zone"], kowabunga.Kompute(
            name="pw1", memory=GiB, vcpus=1, disk=4 * GiB))
        iid = stored(kahuna, "kompute", vm.id)["instance_id"]
        assert komputes.read_kompute_state(vm.id).state == "Running"
        assert komputes.stop_kompute(vm.id) is None
        assert k.domain("pw1")["state"] == "Shutoff" and komputes.read_kompute_state(vm.id).state == "Shutoff"
        assert komputes.stop_kompute(vm.id) is None  # no-op
        assert instances.start_instance(iid) is None
        assert instances.read_instance_state(iid).state == "Running"
        assert instances.suspend_instance(iid) is None and k.domain("pw1")["state"] == "Paused"
        assert instances.resume_instance(iid) is None and k.domain("pw1")["state"] == "Running"
        boots = k.domain("pw1")["boots"]
        assert instances.reboot_instance(iid) is None and instances.reset_instance(iid) is None
        assert k.domain("pw1")["boots"] >= boots
        assert instances.read_instance_remote_connection(iid).url.startswith("spice://10.0.0.11:")
        assert instances.read_instance(iid).name == "pw1"
    with make_client(kahuna, api_key=None, token=world["outsider"]) as outsider:
        with pytest.raises(NotFoundException):
            kowabunga.KomputeApi(outsider).stop_kompute(vm.id)
        with pytest.raises(NotFoundException):
            kowabunga.InstanceApi(outsider).read_instance_state(iid)
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        kowabunga.KomputeApi(member).delete_kompute(vm.id)
    assert k.domain("pw1") is None
