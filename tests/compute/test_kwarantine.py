"""Kwarantine groups through the official client: CRUD, membership routes (same project only),
and placement honouring the host policy (one Kaktus: the second member has nowhere to go, 507)."""

from __future__ import annotations

import kowabunga
import pytest
from kowabunga.exceptions import ApiException, NotFoundException

from agent.sim.model import GiB
from tests.conftest import make_client
from tests.infra.helpers import http


def test_kwarantine_groups_and_anti_affinity(kahuna, world):
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        projects, groups = kowabunga.ProjectApi(member), kowabunga.KwarantineApi(member)
        group = projects.create_project_kwarantine(world["project"], kowabunga.Kwarantine(name="spread"))
        assert (group.policy, group.instances, group.komputes) == ("host", [], [])
        assert projects.list_project_kwarantines(world["project"]) == [group.id]
        assert groups.update_kwarantine(group.id, kowabunga.KwarantineUpdate(description="web")).description == "web"
        a = projects.create_project_zone_kompute(world["project"], world["zone"], kowabunga.Kompute(
            name="aa1", memory=GiB, vcpus=1, disk=4 * GiB, kwarantines=[group.id]))
        assert groups.read_kwarantine(group.id).komputes == [a.id]
        with pytest.raises(ApiException) as err:
            projects.create_project_zone_kompute(world["project"], world["zone"], kowabunga.Kompute(
                name="aa2", memory=GiB, vcpus=1, disk=4 * GiB, kwarantines=[group.id]))
        assert err.value.status == 507 and "spread" in err.value.body
        assert http(kahuna, "GET", "/kompute")[1] == [a.id]
        assert groups.remove_kwarantine_kompute(group.id, a.id) is None
        assert groups.read_kwarantine(group.id).komputes == []
        assert groups.add_kwarantine_kompute(group.id, a.id).komputes == [a.id]
        kowabunga.KomputeApi(member).delete_kompute(a.id)
        assert groups.read_kwarantine(group.id).komputes == []
    with make_client(kahuna, api_key=None, token=world["outsider"]) as outsider:
        with pytest.raises(NotFoundException):
            kowabunga.KwarantineApi(outsider).read_kwarantine(group.id)
        assert kowabunga.KwarantineApi(outsider).list_kwarantines() == []
    with make_client(kahuna, api_key=None, token=world["member"]) as member:
        assert kowabunga.KwarantineApi(member).delete_kwarantine(group.id) is None
