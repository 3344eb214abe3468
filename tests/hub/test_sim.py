"""Simulated agents: the domain models on their own, then through the hub like real agents."""

import base64

import pytest
import trio

from agent.sim import KaktusModel, KiwiModel, SimError, build_agent
from agent.sim.model import GiB, TiB, template_size
from kahuna.hub import AgentError
from tests.hub.conftest import KAKTUS, KEY, KIWI, KONTROLLER, wait_until

DOMAIN_XML = """<domain type='kvm'><name>{name}</name><memory unit='KiB'>4194304</memory>
<vcpu>2</vcpu><devices><graphics type='spice' autoport='yes'/></devices></domain>"""

KAKTUS_CATALOGUE = {
    "Capabilities", "NodeCapabilities", "CreateInstance", "GetInstance", "UpdateInstance",
    "DeleteInstance", "GetInstanceState", "InstanceIsRunning", "GetInstanceRemoteConnectionUrl",
    "InstanceOperation", "GetLibvirtEndpoint", "MigrateInstance", "GetStoragePoolStats", "CreateRawVolume", "CreateTemplateVolume",
    "CreateOsVolume", "CreateIsoVolume", "UpdateIsoVolume", "GetVolumeInfos", "ResizeVolume",
    "DeleteVolume", "ListFileSystems", "ListFsSubVolumes", "CreateFsSubVolume", "DeleteFsSubVolume",
    "CreateNfsBackends", "UpdateNfsBackends", "DeleteNfsBackends", "Echo"}
KIWI_CATALOGUE = {"Capabilities", "Reload", "CreateDnsZone", "DeleteDnsZone", "CreateDnsRecord",
                  "UpdateDnsRecord", "DeleteDnsRecord", "Echo"}


# ----------------------------------------------------------------------------- models

def test_instance_lifecycle():
    m = KaktusModel(libvirt_address="10.0.0.5")
    m.create_instance("vm1", DOMAIN_XML.format(name="vm1"))
    inst = m.instances["vm1"]
    assert (inst.memory, inst.vcpus) == (4 * GiB, 2)
    assert m.instance_state("vm1") == ("Shutoff", "Unknown") and not m.is_running("vm1")
    with pytest.raises(SimError, match="already exists"):
        m.create_instance("vm1", DOMAIN_XML.format(name="vm1"))
    steps = [(0, ("Running", "Booted")), (2, ("Running", "Booted")), (6, ("Paused", "User")),
             (7, ("Running", "Unpaused")), (3, ("Running", "Booted")), (5, ("Shutoff", "Shutdown")),
             (1, ("Running", "Booted")), (4, ("Shutoff", "Destroyed"))]
    for action, state in steps:
        m.operation("vm1", action)
        assert m.instance_state("vm1") == state, action
    assert inst.autostart and inst.boots == 4
    m.operation("vm1", 4)                  # stopping a stopped domain is a no-op, as upstream
    for action, message in [(7, "domain is not paused"), (2, "domain is not running"),
                            (6, "domain is not running"), (9, "unsupported instance operation: 9")]:
        with pytest.raises(SimError, match=message):
            m.operation("vm1", action)
    m.operation("vm1", 1)
    with pytest.raises(SimError, match="already running"):
        m.operation("vm1", 1)
    assert m.remote_url("vm1") == "spice://10.0.0.5:5900"
    m.delete_instance("vm1")
    with pytest.raises(SimError, match="^Domain not found: no domain with matching name 'vm1'$"):
        m.instance_state("vm1")
    with pytest.raises(SimError, match="XML error"):
        m.create_instance("bad", "<domain><name>bad")


def test_volumes_templates_clones_and_pools():
    m = KaktusModel(pools={"ssd": 100 * GiB}, auto_create_pools=False)
    url = "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img"
    size = m.create_template_volume("ssd", "tpl-noble", url)
    assert size == template_size(url) and 2 * GiB <= size <= 8 * GiB
    assert m.create_template_volume("ssd", "tpl-again", url) == size     # deterministic
    m.create_os_volume("ssd", "vm1-os", 20 * GiB, "tpl-noble")
    assert m.volume_size("ssd", "vm1-os") == 20 * GiB
    assert m.pool_stats("ssd") == (2 * size + 20 * GiB, 100 * GiB - 2 * size - 20 * GiB, 100 * GiB)
    with pytest.raises(SimError, match="Directory not empty"):
        m.delete_volume("ssd", "tpl-noble")
    with pytest.raises(SimError, match="Device or resource busy"):
        m.delete_volume("ssd", "tpl-noble", with_snapshots=True)
    m.delete_volume("ssd", "vm1-os")
    m.delete_volume("ssd", "tpl-noble", with_snapshots=True)
    with pytest.raises(SimError, match="No space left"):
        m.create_raw_volume("ssd", "huge", 200 * GiB)
    with pytest.raises(SimError, match="File exists"):
        m.create_raw_volume("ssd", "tpl-again", GiB)
    with pytest.raises(SimError, match="^rados: ret=-2"):
        m.create_raw_volume("hdd", "x", GiB)
    with pytest.raises(SimError, match="mismatch between RBD volume size"):
        m.create_iso_volume("ssd", "ci", 10, b"123")
    with pytest.raises(SimError, match="unsupported protocol scheme"):
        m.create_template_volume("ssd", "t", "ftp://x/img")
    assert KaktusModel().pool_stats("any")[2] == 16 * TiB          # pools appear on demand


def test_kiwi_records():
    m = KiwiModel()
    m.create_record("acme.internal", "www", ["10.0.0.1"])
    with pytest.raises(SimError, match="already exists"):
        m.create_record("acme.internal", "WWW", ["10.0.0.2"])
    m.update_record("acme.internal", "www", ["10.0.0.3", "10.0.0.4"])
    with pytest.raises(SimError, match="does not exist"):
        m.update_record("acme.internal", "nope", ["10.0.0.1"])
    m.delete_record("acme.internal", "nope")                      # no error, as Kiwi
    assert m.resolve("www.acme.internal.") == ["10.0.0.3", "10.0.0.4"]
    m.reload([{"Name": "other.internal", "Records": [{"Name": "db", "Type": "A", "Addresses": ["10.1.0.9"]},
                                                     {"Name": "alias", "Type": "CNAME", "Addresses": ["db"]}]}])
    assert m.records() == {"db.other.internal.": ["10.1.0.9"]} and m.resolve("www.acme.internal") == []


# ----------------------------------------------------------------------------- through the hub

async def start_sim(hub, agent_type, agent_id, **kw):
    agent, model = build_agent(agent_type, agent_id, KEY, hub.url, backoff_initial=0.05, **kw)
    hub.nursery.start_soon(agent.run)
    await wait_until(lambda: hub.hub.is_connected(agent_id))
    return agent, model


async def test_kaktus_sim_instance_lifecycle_over_the_wire(hub):
    _, model = await start_sim(hub, "Kaktus", KAKTUS)
    assert set(hub.hub.status(KAKTUS)["methods"]) == KAKTUS_CATALOGUE
    call = hub.hub.call
    caps = await call(KAKTUS, "NodeCapabilities", {})
    assert {"Arch", "Vendor", "Model", "Sockets", "Cores", "Threads", "Memory", "GuestEmulator",
            "GuestMachineName"} == set(caps)
    assert await call(KAKTUS, "CreateInstance", {"Name": "vm1", "XML": DOMAIN_XML.format(name="vm1")}) == {}
    assert await call(KAKTUS, "InstanceOperation", {"Name": "vm1", "Action": 0}) == {}
    assert await call(KAKTUS, "GetInstanceState", {"Name": "vm1"}) == {"State": "Running", "Reason": "Booted"}
    assert await call(KAKTUS, "InstanceIsRunning", {"Name": "vm1"}) == {"Running": True}
    assert (await call(KAKTUS, "GetInstanceRemoteConnectionUrl", {"Name": "vm1"}))["URL"].startswith("spice://")
    await call(KAKTUS, "InstanceOperation", {"Name": "vm1", "Action": 5})
    assert model.instance_state("vm1") == ("Shutoff", "Shutdown")
    assert await call(KAKTUS, "InstanceIsRunning", {"Name": "ghost"}) == {"Running": False}
    with pytest.raises(AgentError, match="^Domain not found: no domain with matching name 'ghost'$"):
        await call(KAKTUS, "GetInstanceState", {"Name": "ghost"})
    with pytest.raises(AgentError, match="uint64"):
        await call(KAKTUS, "InstanceOperation", {"Name": "vm1", "Action": "start"})
    await call(KAKTUS, "DeleteInstance", {"Name": "vm1"})
    assert model.instances == {}


async def test_kaktus_sim_storage_over_the_wire(hub):
    _, model = await start_sim(hub, "Kaktus", KAKTUS)
    call = hub.hub.call
    url = "https://images.example.com/debian-12.qcow2"
    reply = await call(KAKTUS, "CreateTemplateVolume", {"Pool": "rbd", "Volume": "tpl", "SourceURL": url})
    assert reply == {"Size": template_size(url)}
    await call(KAKTUS, "CreateOsVolume", {"Pool": "rbd", "Volume": "os", "Size": 30 * GiB, "Template": "tpl"})
    iso = b"cloud-init iso \x00\x01"
    await call(KAKTUS, "CreateIsoVolume", {"Pool": "rbd", "Volume": "ci", "Size": len(iso), "Content": iso})
    assert model.pools["rbd"].volumes["ci"].content == iso          # bytes travel as base64
    new_iso = base64.b64encode(b"v2").decode()
    await call(KAKTUS, "UpdateIsoVolume", {"Pool": "rbd", "Volume": "ci", "Size": 2, "Content": new_iso})
    assert await call(KAKTUS, "GetVolumeInfos", {"Pool": "rbd", "Volume": "ci"}) == {"Size": 2}
    await call(KAKTUS, "ResizeVolume", {"Pool": "rbd", "Volume": "os", "Size": 40 * GiB})
    stats = await call(KAKTUS, "GetStoragePoolStats", {"Pool": "rbd"})
    assert stats["Allocated"] == template_size(url) + 40 * GiB + 2
    assert stats["Allocated"] + stats["Available"] == stats["Capacity"]
    with pytest.raises(AgentError, match="No such file or directory"):
        await call(KAKTUS, "DeleteVolume", {"Pool": "rbd", "Volume": "nope", "WithSnapshots": False})
    fs = (await call(KAKTUS, "ListFileSystems", {}))["FS"]
    sub = await call(KAKTUS, "CreateFsSubVolume", {"FS": fs[0], "SubVolume": "share1"})
    assert sub["Path"].startswith("/volumes/_nogroup/share1/") and sub["BytesUsed"] == 0
    assert await call(KAKTUS, "ListFsSubVolumes", {"FS": fs[0]}) == {"SubVolumes": ["share1"]}
    export = {"ID": 7, "Name": "share1", "FS": fs[0], "Path": sub["Path"], "Access": "RW",
              "Protocols": [4], "Clients": ["10.0.0.0/24"], "Backends": ["10.0.0.2"], "Port": 2049}
    await call(KAKTUS, "CreateNfsBackends", export)
    assert model.nfs_exports[7]["Clients"] == ["10.0.0.0/24"]
    await call(KAKTUS, "DeleteNfsBackends", export)
    await call(KAKTUS, "DeleteFsSubVolume", {"FS": fs[0], "SubVolume": "share1"})


async def test_kiwi_sim_dns_over_the_wire(hub):
    _, model = await start_sim(hub, "Kiwi", KIWI)
    status = hub.hub.status(KIWI)
    assert set(status["methods"]) == KIWI_CATALOGUE and status["version"] == "1.1"
    call = hub.hub.call
    await call(KIWI, "CreateDnsZone", {"Domain": "acme.internal"})
    await call(KIWI, "CreateDnsRecord", {"Domain": "acme.internal", "Entry": "db", "Addresses": ["10.0.0.7"]})
    assert model.resolve("db.acme.internal") == ["10.0.0.7"]
    with pytest.raises(AgentError, match="already exists"):
        await call(KIWI, "CreateDnsRecord", {"Domain": "acme.internal", "Entry": "db", "Addresses": ["10.0.0.8"]})
    await call(KIWI, "UpdateDnsRecord", {"Domain": "acme.internal", "Entry": "db", "Addresses": ["10.0.0.9"]})
    assert model.resolve("db.acme.internal.") == ["10.0.0.9"]
    await call(KIWI, "DeleteDnsRecord", {"Domain": "acme.internal", "Entry": "db"})
    assert model.resolve("db.acme.internal") == []
    await call(KIWI, "Reload", {"Domains": [{"Name": "r1.acme", "Records": [
        {"Name": "gw", "Type": "A", "Addresses": ["10.9.0.1"]}]}]})
    assert model.records() == {"gw.r1.acme.": ["10.9.0.1"]} and model.reloads == 1


async def test_kontroller_sim_reloads_from_a_connect_hook(hub):
    reloaded = trio.Event()

    async def hook(agent_id):
        await hub.hub.call(agent_id, "Kontroller.Reload", {})
        reloaded.set()
    hub.hub.on_connect("Kontroller", hook)
    _, model = await start_sim(hub, "Kontroller", KONTROLLER)
    with trio.fail_after(3):
        await reloaded.wait()
    assert model.reloads == 1
