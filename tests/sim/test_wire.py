"""Simulated agents through the real hub (in-process, real WebSocket): faults as the hub sees
them, live migration between two sims, the appliance Kontroller fetching its profile."""

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trio

from agent.sim.harness import SimKaktus, SimKontroller
from agent.sim.model import GiB
from kahuna.hub import AgentCredential, AgentError, InMemoryCredentials
from tests.hub.conftest import FAST, KAKTUS, KEY, KIWI, KONTROLLER, wait_until
from tests.sim.conftest import appliance_files, build_cidata

XML = ("<domain type='kvm'><name>{n}</name><memory unit='B'>1073741824</memory><vcpu>1</vcpu>"
       "<devices><disk type='network' device='disk'><source protocol='rbd' name='ssd/{n}-os'/>"
       "<target dev='vda' bus='virtio'/></disk></devices></domain>")


async def start(hub, sim):
    await hub.nursery.start(sim.run)
    await wait_until(lambda: hub.hub.is_connected(sim.agent_id))
    return sim


async def test_faults_fail_delay_and_drop_as_the_hub_sees_them(hub):
    k = await start(hub, SimKaktus(KAKTUS, KEY, hub.url, pools={"ssd": 20 * GiB}))
    call = hub.hub.call
    k.faults.fail("CreateRawVolume", "rbd: ret=-5, Input/output error", times=1)
    with pytest.raises(AgentError, match="Input/output error"):
        await call(KAKTUS, "CreateRawVolume", {"Pool": "ssd", "Volume": "v1", "Size": GiB})
    assert k.images("ssd") == {}                         # nothing done
    await call(KAKTUS, "CreateRawVolume", {"Pool": "ssd", "Volume": "v1", "Size": GiB})  # once only
    k.faults.delay("GetVolumeInfos", 0.5)
    with pytest.raises(Exception):
        await call(KAKTUS, "GetVolumeInfos", {"Pool": "ssd", "Volume": "v1"}, timeout=0.2)
    k.faults.clear("GetVolumeInfos")
    await wait_until(lambda: len(k.calls("GetVolumeInfos")) == 1)   # it still ends, late
    sessions = k.agent.sessions
    k.faults.drop("CreateRawVolume")
    with pytest.raises(Exception):
        await call(KAKTUS, "CreateRawVolume", {"Pool": "ssd", "Volume": "v2", "Size": GiB}, timeout=5)
    assert "v2" not in k.images("ssd")
    await wait_until(lambda: k.agent.sessions > sessions and hub.hub.is_connected(KAKTUS), timeout=5)
    assert await call(KAKTUS, "GetVolumeInfos", {"Pool": "ssd", "Volume": "v1"}) == {"Size": GiB}
    outcomes = [(m, o) for m, _, o in k.calls()]
    assert outcomes[:3] == [("CreateRawVolume", "error: rbd: ret=-5, Input/output error"),
                            ("CreateRawVolume", "ok"), ("GetVolumeInfos", "ok")]
    assert ("CreateRawVolume", "dropped") in outcomes
    with pytest.raises(AgentError, match="No space left"):
        await call(KAKTUS, "CreateRawVolume", {"Pool": "ssd", "Volume": "big", "Size": 30 * GiB})
    with pytest.raises(AgentError, match="^rados: ret=-2"):
        await call(KAKTUS, "CreateRawVolume", {"Pool": "hdd", "Volume": "x", "Size": GiB})


async def test_stop_and_start_keep_the_model(hub):
    k = await start(hub, SimKaktus(KAKTUS, KEY, hub.url, pools={"ssd": 20 * GiB}))
    await hub.hub.call(KAKTUS, "CreateRawVolume", {"Pool": "ssd", "Volume": "keep", "Size": GiB})
    k.stop()
    await wait_until(lambda: not hub.hub.is_connected(KAKTUS))
    k.start()
    await wait_until(lambda: hub.hub.is_connected(KAKTUS))
    assert (await hub.hub.call(KAKTUS, "GetVolumeInfos", {"Pool": "ssd", "Volume": "keep"}))["Size"] == GiB


async def test_live_migration_between_two_sims_over_the_wire(start_hub):
    other = "0123456789abcdef0123ffff"
    handle = await start_hub(FAST, InMemoryCredentials([AgentCredential(KAKTUS, "Kaktus", KEY),
                                                        AgentCredential(other, "Kaktus", KEY)]))
    a = await start(handle, SimKaktus(KAKTUS, KEY, handle.url, libvirt_address="10.0.0.1"))
    b = await start(handle, SimKaktus(other, KEY, handle.url, libvirt_address="10.0.0.2"))
    call = handle.hub.call
    await call(KAKTUS, "CreateInstance", {"Name": "vm1", "XML": XML.format(n="vm1")})
    await call(KAKTUS, "InstanceOperation", {"Name": "vm1", "Action": 0})
    ep = await call(other, "GetLibvirtEndpoint", {})
    assert ep == {"Protocol": "tcp", "Address": "10.0.0.2", "Port": b.model.libvirt_port}
    uri = f"qemu+{ep['Protocol']}://{ep['Address']}:{ep['Port']}/system"
    assert await call(KAKTUS, "MigrateInstance", {"Name": "vm1", "DestinationURI": uri}) == {}
    assert a.domains() == {} and b.domain("vm1")["state"] == "Running"
    assert b.domain("vm1")["disks"][0]["volume"] == "vm1-os"
    assert await call(other, "GetInstanceState", {"Name": "vm1"}) == {"State": "Running", "Reason": "Booted"}
    a.model.close()
    b.model.close()


class Profiles(BaseHTTPRequestHandler):
    """A metadata service stand-in: answers the profile for the right token only."""
    profile: dict = {}
    seen: list = []

    def do_GET(self):
        type(self).seen.append(dict(self.headers))
        if self.path != "/latest/meta-data" or self.headers.get("X-Kowabunga-Instance-Token") != "tok-1":
            self.send_response(403)
            self.end_headers()
            return
        body = json.dumps(self.profile).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Profiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data"
    server.shutdown()
    thread.join(5)


KAWAII = {"instance-id": "65f000000000000000000001", "local-hostname": "kw1", "peers": ["10.0.0.11"],
          "kawaii": {"public_vip_addresses": ["192.0.2.10"], "public_gw_address": "192.0.2.1",
                     "virtual_ips": [{"vrrp_id": 7, "interface": "ens3", "vip": "192.0.2.10",
                                      "priority": 150, "mask": 24, "public": True},
                                     {"vrrp_id": 7, "interface": "ens4", "vip": "10.0.0.1",
                                      "priority": 150, "mask": 24, "public": False}],
                     "fw_input_default": "drop", "fw_output_default": "accept",
                     "fw_forward_default": "drop", "fw_input_rules": [], "fw_output_rules": [],
                     "fw_forward_rules": [],
                     "fw_nat_rules": [{"private_ip": "10.0.0.5", "public_ip": "192.0.2.10",
                                       "protocol": "tcp", "ports": "443"}],
                     "ipsec_connections": [{"name": "hq", "remote_peer": "198.51.100.1"}]}}


async def test_kontroller_boots_from_its_iso_and_reloads_its_profile(hub, metadata_server):
    Profiles.profile, Profiles.seen = KAWAII, []
    iso = build_cidata(appliance_files(KONTROLLER, KEY, hub.url, metadata_server))
    k = await start(hub, SimKaktus(KAKTUS, KEY, hub.url, pools={"ssd": 20 * GiB}))
    await hub.hub.call(KAKTUS, "CreateIsoVolume", {"Pool": "ssd", "Volume": "kw1-cloudinit",
                                                   "Size": len(iso), "Content": base64.b64encode(iso).decode()})
    files = k.iso_files("ssd", "kw1-cloudinit")
    kon = await start(hub, SimKontroller(lambda: k.iso_files("ssd", "kw1-cloudinit")))
    assert kon.agent_id == KONTROLLER and set(files) == {"user-data", "meta-data", "network-config"}
    assert await hub.hub.call(KONTROLLER, "Reload", {}) == {}
    state = kon.state()
    assert state["reloads"] == 1 and state["kind"] == "kawaii"
    assert [v["vip"] for v in state["vips"]] == ["192.0.2.10", "10.0.0.1"]
    assert state["vrrp_instances"] == {7: ["192.0.2.10", "10.0.0.1"]} or \
        state["vrrp_instances"] == {"7": ["192.0.2.10", "10.0.0.1"]}
    assert state["nat"][0]["private_ip"] == "10.0.0.5" and state["ipsec"][0]["name"] == "hq"
    assert state["firewall"]["input_default"] == "drop" and state["peers"] == ["10.0.0.11"]
    seen = Profiles.seen[-1]
    assert seen["X-Kowabunga-Instance-Id"] == "65f000000000000000000001"
    assert seen["X-Kowabunga-Source-Ip"] == "10.0.0.10"
    # a rebuilt ISO with another token: the next Reload re-reads it and the service refuses it
    iso2 = build_cidata(appliance_files(KONTROLLER, KEY, hub.url, metadata_server, token="stale"))
    await hub.hub.call(KAKTUS, "UpdateIsoVolume", {"Pool": "ssd", "Volume": "kw1-cloudinit",
                                                   "Size": len(iso2), "Content": base64.b64encode(iso2).decode()})
    with pytest.raises(AgentError, match="HTTP 403"):
        await hub.hub.call(KONTROLLER, "Reload", {})
    assert kon.state()["reloads"] == 1 and "HTTP 403" in kon.state()["errors"][-1]


async def test_drop_with_down_time_and_a_hub_that_moved(hub, start_hub):
    k = await start(hub, SimKaktus(KAKTUS, KEY, hub.url))
    k.faults.drop("CreateRawVolume", down_for=0.5)
    began = trio.current_time()
    with pytest.raises(Exception):
        await hub.hub.call(KAKTUS, "CreateRawVolume", {"Pool": "p", "Volume": "v", "Size": 1}, timeout=5)
    await wait_until(lambda: not hub.hub.is_connected(KAKTUS))
    await wait_until(lambda: hub.hub.is_connected(KAKTUS), timeout=5)
    assert trio.current_time() - began >= 0.5
    k.faults.drop("CreateRawVolume", down_for=None)             # away until start()
    with pytest.raises(Exception):
        await hub.hub.call(KAKTUS, "CreateRawVolume", {"Pool": "p", "Volume": "v", "Size": 1}, timeout=5)
    await trio.sleep(1.2)
    assert not hub.hub.is_connected(KAKTUS) and not k.connected
    other = await start_hub()                                   # "Kahuna restarted on new ports"
    k.start(other.url)
    await wait_until(lambda: other.hub.is_connected(KAKTUS), timeout=5)
    assert not hub.hub.is_connected(KAKTUS)
    await other.hub.call(KAKTUS, "CreateRawVolume", {"Pool": "p", "Volume": "v", "Size": 1})
    assert k.image("p", "v")["size"] == 1


async def test_hundreds_of_vms_on_a_few_sims(start_hub):
    ids = [f"{i:024x}" for i in range(1, 5)]
    handle = await start_hub(FAST, InMemoryCredentials([AgentCredential(i, "Kaktus", KEY) for i in ids]))
    sims = [await start(handle, SimKaktus(i, KEY, handle.url, pools={"ssd": 100 * 2**40})) for i in ids]
    began = trio.current_time()

    async def vm(n):
        agent = ids[n % len(ids)]
        await handle.hub.call(agent, "CreateRawVolume", {"Pool": "ssd", "Volume": f"vm{n}-os", "Size": 10 * GiB})
        await handle.hub.call(agent, "CreateInstance", {"Name": f"vm{n}", "XML": XML.format(n=f"vm{n}")})
        await handle.hub.call(agent, "InstanceOperation", {"Name": f"vm{n}", "Action": 0})
    async with trio.open_nursery() as nursery:
        for n in range(400):
            nursery.start_soon(vm, n)
    assert sum(len(s.domains()) for s in sims) == 400
    assert all(d["state"] == "Running" for s in sims for d in s.domains().values())
    assert len({d["spice"]["port"] for d in sims[0].domains().values()}) == 100
    assert trio.current_time() - began < 20
    for s in sims:
        s.model.close()
