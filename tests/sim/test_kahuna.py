"""The in-process sims of sync tests (SimHost) against a real Kahuna subprocess: agents created
with the admin CLI connect over the real hub, the Kontroller connect hook reloads the appliance,
fault injection and inspection work from the test thread."""

import base64

import pytest

from agent.sim.harness import SimHost
from agent.sim.model import GiB
from tests.infra.helpers import agent_status, create_agents, wait_for
from tests.kahuna_proc import Kahuna, write_config
from tests.sim.conftest import appliance_files, build_cidata
from tests.sim.test_wire import KAWAII, Profiles, metadata_server  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    work = tmp_path_factory.mktemp("sim-kahuna")
    config = write_config(work / "kahuna.yml", work / "data", ws={"callTimeout": 3.0})
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


@pytest.fixture(scope="module")
def host():
    with SimHost() as h:
        yield h


def hub_url(kahuna):
    return f"ws://127.0.0.1:{kahuna.hub_port}/ws"


def test_sim_kaktus_connects_to_kahuna_and_is_inspectable(kahuna, host):
    agent = create_agents(kahuna, "Kaktus")[0]
    k = host.kaktus(agent["id"], agent["key"], hub_url(kahuna), pools={"ssd": 50 * GiB},
                    libvirt_address="10.0.0.11")
    k.wait_connected()
    wait_for(lambda: agent_status(kahuna, agent["id"])["connected"], "Kahuna to see the sim")
    iso = build_cidata({"meta-data": "instance-id: x\n", "user-data": "#cloud-config\n",
                        "network-config": "version: 2\n"})
    host.run(lambda: k.agent.dispatch("Kaktus.CreateIsoVolume", {
        "Pool": "ssd", "Volume": "vm-cloudinit", "Size": len(iso),
        "Content": base64.b64encode(iso).decode()}))
    assert k.iso_files("ssd", "vm-cloudinit")["meta-data"] == "instance-id: x\n"
    assert k.image("ssd", "vm-cloudinit")["kind"] == "iso"
    k.faults.fail("CreateRawVolume", "boom")
    assert k.faults.calls()[-1][0] == "CreateIsoVolume"
    k.stop()
    wait_for(lambda: not agent_status(kahuna, agent["id"])["connected"], "Kahuna to see it leave")
    k.start()
    k.wait_connected()


def test_kontroller_connect_hook_reloads_the_appliance(kahuna, host, metadata_server):
    Profiles.profile, Profiles.seen = KAWAII, []
    agent = create_agents(kahuna, "Kontroller")[0]
    files = appliance_files(agent["id"], agent["key"], hub_url(kahuna), metadata_server)
    kon = host.kontroller_from_iso(files)
    kon.wait_connected()
    state = kon.wait_reloads(1)              # Kahuna's connect hook called Kontroller.Reload
    assert state["kind"] == "kawaii" and state["public_vips"] == ["192.0.2.10"]
    assert Profiles.seen[-1]["X-Kowabunga-Instance-Token"] == "tok-1"


def test_kontroller_reads_its_iso_from_the_sim_kaktus(kahuna, host, metadata_server):
    Profiles.profile, Profiles.seen = KAWAII, []
    kaktus = create_agents(kahuna, "Kaktus")[0]
    k = host.kaktus(kaktus["id"], kaktus["key"], hub_url(kahuna), pools={"ssd": 10 * GiB})
    k.wait_connected()
    appliance = create_agents(kahuna, "Kontroller")[0]
    iso = build_cidata(appliance_files(appliance["id"], appliance["key"], hub_url(kahuna), metadata_server))
    host.run(lambda: k.agent.dispatch("Kaktus.CreateIsoVolume", {
        "Pool": "ssd", "Volume": "kw1-cloudinit", "Size": len(iso),
        "Content": base64.b64encode(iso).decode()}))
    kon = host.kontroller(k, "ssd", "kw1-cloudinit")
    assert kon.agent_id == appliance["id"]
    state = kon.wait_reloads(1)
    assert state["vrrp_instances"] == {"7": ["192.0.2.10", "10.0.0.1"]}   # JSON keys
    assert agent_status(kahuna, appliance["id"])["connected"]
