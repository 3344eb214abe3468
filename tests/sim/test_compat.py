"""The sim against Kahuna's own builders (kept independent in code, checked together here): the
domain XML of kahuna.orchestrator.virtxml defines a sim domain with the same hardware, and an
appliance ISO of kahuna.cloudinit boots the sim Kontroller with the right identity."""

from agent.sim.cidata import iso_label, meta_data, read_iso
from agent.sim.harness import SimKontroller
from agent.sim.model import GiB, KaktusModel, LibvirtRegistry
from kahuna.cloudinit import CloudInitProfile, build_iso, render
from kahuna.orchestrator.virtxml import DiskSpec, DomainSpec, NicSpec, domain_xml


def test_virtxml_domain_is_defined_with_its_hardware():
    monitors = (("10.0.0.2", 3300),)
    spec = DomainSpec(name="vm1", vcpus=4, memory=6 * GiB, spice_listen="10.50.0.11",
                      disks=(DiskSpec("hdd", "ssd", "vm1-cloudinit", monitors=monitors, cdrom=True),
                             DiskSpec("vda", "ssd", "vm1-os", monitors=monitors),
                             DiskSpec("vdb", "ssd", "vm1-data", monitors=monitors)),
                      nics=(NicSpec("52:54:00:00:00:01", "br-public"), NicSpec("52:54:00:00:00:02", "br100")))
    m = KaktusModel(libvirt_address="10.50.0.11", registry=LibvirtRegistry())
    m.create_instance("vm1", domain_xml(spec))
    m.operation("vm1", 0)
    view = m.instances["vm1"].view()
    assert (view["vcpus"], view["memory"], view["state"]) == (4, 6 * GiB, "Running")
    assert [(d["device"], d["pool"], d["volume"], d["target"]) for d in view["disks"]] == [
        ("cdrom", "ssd", "vm1-cloudinit", "hdd"), ("disk", "ssd", "vm1-os", "vda"),
        ("disk", "ssd", "vm1-data", "vdb")]
    assert [(n["mac"], n["bridge"]) for n in view["nics"]] == [
        ("52:54:00:00:00:01", "br-public"), ("52:54:00:00:00:02", "br100")]
    assert view["spice"]["listen"] == "10.50.0.11"
    assert m.remote_url("vm1") == "spice://10.50.0.11:5900"


def test_kahuna_appliance_iso_boots_the_sim_kontroller():
    profile = CloudInitProfile(hostname="kw1", instance_id="65f0000000000000000000aa", profile="kawaii",
                               domain="acme.internal", region="r1", zone="z1",
                               root_password="Secret-123", service_user="kowabunga",
                               service_user_pubkey="ssh-ed25519 AAAA test",
                               metadata_url="http://127.0.0.1:8080/latest/meta-data",
                               local_ip="10.0.0.10", metadata_token="tok",
                               controller_url="ws://127.0.0.1:8080",
                               controller_agent_id="65f0000000000000000000bb",
                               controller_agent_token="k" * 64)
    data = build_iso(render(profile))
    files = read_iso(data)
    assert iso_label(data) == "cidata" and set(files) >= {"user-data", "meta-data", "network-config"}
    meta = meta_data(files)
    assert meta["instance-id"] == "65f0000000000000000000aa" and meta["kowabunga_metadata_token"] == "tok"
    sim = SimKontroller(lambda: files)
    assert (sim.agent_id, sim.key) == ("65f0000000000000000000bb", "k" * 64)
    assert sim.agent.url == "ws://127.0.0.1:8080/ws"
