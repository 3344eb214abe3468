"""The simulated Kaktus on its own: domain definitions, migration, storage rules, ISO reading."""

import pytest

from agent.sim.cidata import iso_label, meta_data, read_iso
from agent.sim.model import GiB, KaktusModel, LibvirtRegistry, SimError, parse_domain
from tests.sim.conftest import build_cidata

DOMAIN = """<domain type='kvm'>
  <name>{name}</name><uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>
  <memory unit='B'>2147483648</memory><vcpu placement='static'>3</vcpu>
  <devices>
    <disk type='network' device='cdrom'>
      <source protocol='rbd' name='ssd/{name}-cloudinit'><host name='10.0.0.2' port='3300'/></source>
      <target dev='hdd' bus='sata'/><readonly/><serial>cloudinit</serial></disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='ssd/{name}-os'/><target dev='vda' bus='virtio'/></disk>
    <interface type='bridge'><mac address='52:54:00:AA:BB:01'/><source bridge='br100'/><model type='virtio'/></interface>
    <interface type='network'><mac address='52:54:00:aa:bb:02'/><source network='public'/></interface>
    <graphics type='spice' autoport='yes'><listen type='address' address='10.50.0.11'/></graphics>
  </devices></domain>"""


def test_domain_definition_is_parsed_with_its_hardware():
    info = parse_domain(DOMAIN.format(name="vm1"))
    assert (info["name"], info["vcpus"], info["memory"]) == ("vm1", 3, 2 * GiB)
    assert [(d["device"], d["pool"], d["volume"], d["target"], d["bus"]) for d in info["disks"]] == [
        ("cdrom", "ssd", "vm1-cloudinit", "hdd", "sata"), ("disk", "ssd", "vm1-os", "vda", "virtio")]
    assert info["disks"][0]["readonly"] and info["disks"][0]["host"] == "10.0.0.2:3300"
    assert [(n["mac"], n["bridge"], n["network"]) for n in info["nics"]] == [
        ("52:54:00:aa:bb:01", "br100", None), ("52:54:00:aa:bb:02", None, "public")]
    assert info["spice"] == {"listen": "10.50.0.11", "port": None}
    for bad, message in [("<domain><name>x", "XML error"), ("<vm/>", "expecting <domain>"),
                         ("<domain><memory unit='parsec'>1</memory></domain>", "unknown memory unit"),
                         ("<domain><vcpu>two</vcpu></domain>", "vcpus count")]:
        with pytest.raises(SimError, match=message):
            parse_domain(bad)


def test_redefine_keeps_state_and_takes_the_new_hardware():
    m = KaktusModel(registry=LibvirtRegistry())
    m.create_instance("vm1", DOMAIN.format(name="vm1"))
    m.operation("vm1", 0)
    bigger = DOMAIN.format(name="vm1").replace(">3<", ">8<").replace("2147483648", "8589934592")
    m.update_instance("vm1", bigger)
    view = m.instances["vm1"].view()
    assert (view["vcpus"], view["memory"], view["state"], view["autostart"]) == (8, 8 * GiB, "Running", True)
    assert view["spice"] == {"listen": "10.50.0.11", "port": 5900}


def test_live_migration_moves_the_running_domain_to_the_other_host():
    registry = LibvirtRegistry()
    a = KaktusModel(libvirt_address="10.0.0.1", registry=registry)
    b = KaktusModel(libvirt_address="10.0.0.2", registry=registry)
    a.create_instance("vm1", DOMAIN.format(name="vm1"))
    endpoint = b.libvirt_endpoint()
    assert endpoint["Protocol"] == "tcp" and endpoint["Address"] == "10.0.0.2"
    uri = f"qemu+tcp://{endpoint['Address']}:{endpoint['Port']}/system"
    with pytest.raises(SimError, match="domain is not running"):
        a.migrate("vm1", uri)
    a.operation("vm1", 0)
    with pytest.raises(SimError, match="host it runs on"):
        a.migrate("vm1", f"qemu+tcp://10.0.0.1:{a.libvirt_port}/system")
    with pytest.raises(SimError, match="Connection refused"):
        a.migrate("vm1", "qemu+tcp://10.9.9.9:16509/system")
    a.migrate("vm1", uri)
    assert "vm1" not in a.instances and b.instance_state("vm1") == ("Running", "Booted")
    assert b.instances["vm1"].migrations == 1 and b.remote_url("vm1") == "spice://10.0.0.2:5900"
    b.close()
    with pytest.raises(SimError, match="Connection refused"):
        registry.lookup(uri)


def test_storage_capacity_shrink_and_clones():
    m = KaktusModel(pools={"ssd": 10 * GiB}, auto_create_pools=False, registry=LibvirtRegistry())
    m.create_raw_volume("ssd", "tpl", 2 * GiB)
    m.create_os_volume("ssd", "vm1-os", 6 * GiB, "tpl")
    assert m.pools["ssd"].volumes["tpl"].snapshots == {"kowabunga"}
    with pytest.raises(SimError, match="No space left"):
        m.create_raw_volume("ssd", "big", 3 * GiB)
    with pytest.raises(SimError, match="No space left"):
        m.resize_volume("ssd", "vm1-os", 9 * GiB)
    with pytest.raises(SimError, match="shrinking"):
        m.resize_volume("ssd", "vm1-os", 1 * GiB)
    assert m.pool_stats("ssd") == (8 * GiB, 2 * GiB, 10 * GiB)


def test_cidata_iso_is_read_back():
    files = {"user-data": "#cloud-config\n", "meta-data": "instance-id: i-1\nkowabunga_metadata_token: t\n",
             "network-config": "version: 2\n"}
    data = build_cidata(files)
    assert read_iso(data) == files and iso_label(data) == "cidata"
    assert meta_data(files) == {"instance-id": "i-1", "kowabunga_metadata_token": "t"}
    with pytest.raises(SimError, match="not an ISO"):
        read_iso(b"nope" * 1000)
