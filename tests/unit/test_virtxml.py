"""Domain XML as libvirt would read it: structure of newer upstream's virtxml, RBD disks with the
Ceph monitors and secret, the ISO as a read-only cdrom, NICs, SPICE on the management address."""

import xml.etree.ElementTree as ET

import pytest

from kahuna.orchestrator.virtxml import DiskSpec, DomainSpec, NicSpec, disk_dev, domain_xml, parse_domain_xml

MONS = (("10.50.0.1", 3300), ("10.50.0.2", 3300))
GiB = 1024 ** 3


def spec(**kw):
    base = dict(name="web-1", description="web server <1> & co", vcpus=12, memory=4 * GiB,
                spice_listen="10.50.0.11",
                disks=(DiskSpec("vdb", "rbd", "web-1-data", MONS, "5b1e-uuid"),
                       DiskSpec("vda", "rbd", "web-1-os", MONS, "5b1e-uuid"),
                       DiskSpec("hdd", "rbd", "web-1-cloudinit", MONS, "5b1e-uuid", cdrom=True)),
                nics=(NicSpec("da:1e:70:00:00:01", "br-public"), NicSpec("da:1e:70:00:00:02", "br-vlan42")))
    base.update(kw)
    return DomainSpec(**base)


def test_round_trip():
    parsed = parse_domain_xml(domain_xml(spec()))
    assert parsed["name"] == "web-1" and parsed["description"] == "web server <1> & co"
    assert parsed["vcpus"] == 12 and parsed["memory"] == 4 * GiB and parsed["uefi"] is True
    assert [d["dev"] for d in parsed["disks"]] == ["hdd", "vda", "vdb"]  # upstream's sort: ISO first
    iso, os_disk, data = parsed["disks"]
    assert iso == {"dev": "hdd", "bus": "sata", "device": "cdrom", "type": "network", "protocol": "rbd",
                   "source": "rbd/web-1-cloudinit", "pool": "rbd", "volume": "web-1-cloudinit",
                   "hosts": list(MONS), "secret_uuid": "5b1e-uuid", "readonly": True}
    assert os_disk["device"] == "disk" and os_disk["bus"] == "virtio" and not os_disk["readonly"]
    assert data["volume"] == "web-1-data"
    assert parsed["nics"] == [{"mac": "da:1e:70:00:00:01", "bridge": "br-public", "model": "virtio"},
                              {"mac": "da:1e:70:00:00:02", "bridge": "br-vlan42", "model": "virtio"}]
    assert parsed["spice_listen"] == "10.50.0.11"


def test_structure_linux():
    root = ET.fromstring(domain_xml(spec()))
    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.find("memory").get("unit") == "B" and root.find("vcpu").get("placement") == "static"
    assert root.findtext("iothreads") == "1"
    os_el = root.find("os")
    assert os_el.get("firmware") == "efi" and os_el.find("type").get("machine") == "q35"
    assert os_el.find("type").text == "hvm" and os_el.find("boot").get("dev") == "hd"
    assert root.find("cpu").attrib == {"mode": "host-model", "check": "partial", "migratable": "on"}
    assert root.find("features/pmu").get("state") == "off" and root.find("features/hyperv") is None
    assert root.find("clock").get("offset") == "utc"
    assert [t.get("name") for t in root.findall("clock/timer")] == ["rtc", "pit", "hpet", "kvmclock"]
    assert (root.findtext("on_poweroff"), root.findtext("on_reboot"), root.findtext("on_crash")) == \
        ("destroy", "restart", "destroy")
    dev = root.find("devices")
    data = dev.findall("disk")[2]
    assert data.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "writeback",
                                          "discard": "unmap", "iothread": "1"}
    assert data.find("auth").get("username") == "libvirt"
    assert data.find("auth/secret").attrib == {"type": "ceph", "uuid": "5b1e-uuid"}
    assert dev.findall("disk")[0].findtext("serial") == "cloudinit"
    for nic in dev.findall("interface"):
        assert nic.get("type") == "bridge"
        assert nic.find("driver").attrib == {"name": "vhost", "queues": "8"}  # min(vcpus, 8)
    assert dev.find("controller[@type='usb']").get("model") == "qemu-xhci"
    assert {(i.get("type"), i.get("bus")) for i in dev.findall("input")} == {("tablet", "usb"), ("keyboard", "usb")}
    gfx = dev.find("graphics")
    assert gfx.get("type") == "spice" and gfx.find("listen").attrib == {"type": "address", "address": "10.50.0.11"}
    assert "0.0.0.0" not in domain_xml(spec())
    assert dev.find("channel/target").get("name") == "org.qemu.guest_agent.0"
    assert dev.find("rng/backend").text == "/dev/urandom"
    assert dev.find("video/model").get("type") == "virtio"
    assert dev.find("memballoon").attrib == {"model": "virtio", "autodeflate": "on"}
    assert dev.find("tpm") is None


def test_structure_windows_forces_uefi_secure_boot():
    root = ET.fromstring(domain_xml(spec(os="windows", uefi=False, vcpus=2)))
    assert root.find("os").get("firmware") == "efi"
    assert {f.get("name") for f in root.findall("os/firmware/feature")} == {"secure-boot", "enrolled-keys"}
    assert root.find("features/smm").get("state") == "on"
    hv = root.find("features/hyperv")
    assert hv.find("spinlocks").get("retries") == "8191" and hv.find("synic").get("state") == "on"
    assert root.find("clock").get("offset") == "localtime"
    assert root.find("pm/suspend-to-mem").get("enabled") == "no"
    dev = root.find("devices")
    assert dev.find("tpm").get("model") == "tpm-crb" and dev.find("tpm/backend").get("version") == "2.0"
    assert dev.find("video/model").get("type") == "qxl" and dev.find("sound").get("model") == "ich9"
    assert dev.find("channel/target").get("name") == "com.redhat.spice.0"
    assert dev.find("interface/driver").get("queues") == "2"


def test_bios_linux():
    root = ET.fromstring(domain_xml(spec(uefi=False)))
    assert root.find("os").get("firmware") is None


def test_names_are_escaped_not_pasted():
    x = domain_xml(spec(name='a"><evil/>', description="</description><devices/>"))
    root = ET.fromstring(x)
    assert root.findtext("name") == 'a"><evil/>' and root.find("evil") is None
    assert len(root.findall("devices")) == 1


@pytest.mark.parametrize("bad", ["0.0.0.0", "::", "", "kaktus-1.local"])
def test_spice_must_be_the_management_address(bad):
    with pytest.raises(ValueError):
        spec(spice_listen=bad)


def test_spec_validation():
    with pytest.raises(ValueError):
        spec(vcpus=0)
    with pytest.raises(ValueError):
        spec(disks=(DiskSpec("vda", "p", "a", MONS), DiskSpec("vda", "p", "b", MONS)))


def test_parse_rejects_hostile_documents():
    for bad in ["<domain>", "<notdomain/>", '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><domain>&a;</domain>',
                "<domain><vcpu>many</vcpu></domain>", "<domain " + "x" * (1 << 20) + "/>"]:
        with pytest.raises(ValueError):
            parse_domain_xml(bad)


def test_parse_libvirt_units():
    """A domain dumped by libvirt (KiB by default) reads back in bytes."""
    parsed = parse_domain_xml("<domain type='kvm'><name>x</name><memory>1048576</memory><vcpu>2</vcpu>"
                              "<devices><interface type='bridge'><mac address='DA:1E:70:00:00:AA'/>"
                              "<source bridge='br0'/></interface></devices></domain>")
    assert parsed["memory"] == GiB and parsed["vcpus"] == 2 and parsed["spice_listen"] == ""
    assert parsed["nics"] == [{"mac": "da:1e:70:00:00:aa", "bridge": "br0", "model": ""}]


def test_disk_dev():
    assert [disk_dev(i) for i in (0, 1, 25, 26, 27, 51, 52)] == ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba"]


def test_simulated_kaktus_reads_our_domain():
    """The simulated Kaktus's own parser (agent/sim) sees the same disks, NICs and SPICE address."""
    from agent.sim.model import parse_domain

    seen = parse_domain(domain_xml(spec()))
    assert seen["vcpus"] == 12 and seen["memory"] == 4 * GiB
    assert [(d["device"], d["pool"], d["volume"], d["target"]) for d in seen["disks"]] == [
        ("cdrom", "rbd", "web-1-cloudinit", "hdd"), ("disk", "rbd", "web-1-os", "vda"),
        ("disk", "rbd", "web-1-data", "vdb")]
    assert [n["mac"] for n in seen["nics"]] == ["da:1e:70:00:00:01", "da:1e:70:00:00:02"]
    assert seen["spice"]["listen"] == "10.50.0.11"
