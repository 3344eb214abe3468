"""libvirt domain XML for a Kaktus instance, built with ElementTree (never by string pasting).

Follows upstream's newer `virtxml.go` (0ad39b7; upstream-tenant.md §3.2): q35 on x86, optional
UEFI (forced for Windows, with secure boot, SMM and a TPM), host-model CPU, one iothread, RBD
network disks authenticated with the pool's Ceph secret, the cloud-init ISO as a read-only SATA
cdrom (also on RBD), virtio NICs on the VNet bridge with vhost multiqueue, usb tablet/keyboard.
Where we differ: SPICE listens on the Kaktus's management address that the caller names, never
0.0.0.0 (upstream exposes every console on every host interface, without password).

`parse_domain_xml` reads back what the simulated Kaktus and the update flow need; it refuses
DTDs/entities so an agent-supplied document cannot expand into gigabytes.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

LINUX, WINDOWS = "linux", "windows"
ISO_DEVICE = "hdd"  # upstream's key for the cloud-init ISO (sorts before vdX, as upstream's map)
CEPH_USER = "libvirt"
MAX_XML = 1 << 20


@dataclass(frozen=True)
class DiskSpec:
    """An RBD volume attached to the domain.

    dev: guest device (`vda` = OS disk, `vdb`… data, `hdd` for the ISO; see `disk_dev`);
    pool: the Ceph pool (StoragePool.pool), volume: the RBD image name; monitors: (address,
    port) of the Ceph monitors (StoragePool ceph_address/ceph_port); secret_uuid: the libvirt
    secret holding the Ceph key (StoragePool ceph_secret_uuid); cdrom: True for the cloud-init ISO.
    """

    dev: str
    pool: str
    volume: str
    monitors: tuple[tuple[str, int], ...]
    secret_uuid: str = ""
    cdrom: bool = False


@dataclass(frozen=True)
class NicSpec:
    """A NIC: the adapter's MAC and the VNet's bridge interface on the Kaktus."""

    mac: str
    bridge: str


@dataclass(frozen=True)
class DomainSpec:
    """What `domain_xml` needs. memory in bytes; spice_listen = the Kaktus management address
    (required, never a wildcard). machine: forced to q35 on x86_64/amd64 as upstream does."""

    name: str
    vcpus: int
    memory: int
    spice_listen: str
    os: str = LINUX
    description: str = ""
    uefi: bool = True
    arch: str = "x86_64"
    machine: str = "q35"
    emulator: str = "/usr/bin/qemu-system-x86_64"
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.os not in (LINUX, WINDOWS):
            raise ValueError(f"os must be linux or windows, not {self.os!r}")
        if self.vcpus < 1 or self.memory < 1:
            raise ValueError("vcpus and memory must be positive")
        try:
            addr = ipaddress.ip_address(self.spice_listen)
        except ValueError:
            raise ValueError(f"spice_listen {self.spice_listen!r} must be the Kaktus's management IP address") from None
        if addr.is_unspecified:
            raise ValueError("spice_listen must be the Kaktus's management address, not a wildcard")
        devs = [d.dev for d in self.disks]
        if len(set(devs)) != len(devs):
            raise ValueError(f"duplicate disk devices: {devs}")


def disk_dev(index: int) -> str:
    """Guest disk names as upstream: 0 -> vda, 25 -> vdz, 26 -> vdaa, …"""
    if index < 0:
        raise ValueError("negative disk index")
    letters = ""
    n = index
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return "vd" + letters


def pool_disk(dev: str, pool: dict, image: str, cdrom: bool = False) -> DiskSpec:
    """A disk on a storage pool document (its Ceph monitor and libvirt secret)."""
    monitors = ((pool.get("ceph_mon_address") or "localhost", int(pool.get("ceph_mon_port") or 3300)),)
    return DiskSpec(dev, pool["libvirt_pool"], image, monitors, pool.get("ceph_auth_secret_uuid", ""), cdrom=cdrom)


def instance_domain(instance: dict, *, os: str, spice_listen: str, disks: tuple[DiskSpec, ...],
                    nics: tuple[NicSpec, ...]) -> str:
    """The domain of an instance document (Kompute-owned or standalone): one place reads its
    name, size, description and firmware, so the two builders cannot drift apart."""
    return domain_xml(DomainSpec(
        name=instance["name"], vcpus=int(instance["vcpus"]), memory=int(instance["memory"]),
        spice_listen=spice_listen, os=os or LINUX, description=instance.get("description", ""),
        uefi=bool(instance.get("uefi", True)), disks=tuple(disks), nics=tuple(nics)))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def _features(root: ET.Element, spec: DomainSpec, windows_uefi: bool) -> None:
    feats = _sub(root, "features")
    for tag in ("pae", "acpi", "apic"):
        _sub(feats, tag)
    _sub(feats, "pmu", state="off")
    if spec.os == WINDOWS:
        hv = _sub(feats, "hyperv", mode="custom")
        for tag in ("relaxed", "vapic"):
            _sub(hv, tag, state="on")
        _sub(hv, "spinlocks", state="on", retries=8191)
        for tag in ("vpindex", "runtime", "synic", "stimer", "reset", "frequencies", "tlbflush", "ipi"):
            _sub(hv, tag, state="on")
    if windows_uefi:
        _sub(feats, "smm", state="on")


def _disk(devices: ET.Element, d: DiskSpec) -> None:
    disk = _sub(devices, "disk", type="network", device="cdrom" if d.cdrom else "disk")
    if d.cdrom:
        _sub(disk, "driver", name="qemu", type="raw")
    else:
        _sub(disk, "driver", name="qemu", type="raw", cache="writeback", discard="unmap", iothread=1)
    if d.secret_uuid:
        auth = _sub(disk, "auth", username=CEPH_USER)
        _sub(auth, "secret", type="ceph", uuid=d.secret_uuid)
    src = _sub(disk, "source", protocol="rbd", name=f"{d.pool}/{d.volume}")
    for host, port in d.monitors:
        _sub(src, "host", name=host, port=int(port))
    _sub(disk, "target", dev=d.dev, bus="sata" if d.cdrom else "virtio")
    if d.cdrom:
        _sub(disk, "readonly")
        _sub(disk, "serial", "cloudinit")


def domain_xml(spec: DomainSpec) -> str:
    """The libvirt `<domain>` document for `spec` (a str, UTF-8, no XML declaration)."""
    windows = spec.os == WINDOWS
    uefi = spec.uefi or windows
    root = ET.Element("domain", type="kvm")
    _sub(root, "name", spec.name)
    if spec.description:
        _sub(root, "description", spec.description)
    _sub(root, "memory", spec.memory, unit="B")
    _sub(root, "currentMemory", spec.memory, unit="B")
    _sub(root, "vcpu", spec.vcpus, placement="static")
    _sub(root, "iothreads", 1)

    os_el = _sub(root, "os", **({"firmware": "efi"} if uefi else {}))
    machine = "q35" if spec.arch in ("x86_64", "amd64") else spec.machine
    _sub(os_el, "type", "hvm", arch=spec.arch, machine=machine)
    if uefi and windows:
        fw = _sub(os_el, "firmware")
        _sub(fw, "feature", enabled="yes", name="secure-boot")
        _sub(fw, "feature", enabled="yes", name="enrolled-keys")
    _sub(os_el, "boot", dev="hd")

    _features(root, spec, uefi and windows)
    _sub(root, "cpu", mode="host-model", check="partial", migratable="on")
    clock = _sub(root, "clock", offset="localtime" if windows else "utc")
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    _sub(clock, "timer", name="hypervclock" if windows else "kvmclock", present="yes")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    if windows:
        pm = _sub(root, "pm")
        _sub(pm, "suspend-to-mem", enabled="no")
        _sub(pm, "suspend-to-disk", enabled="no")

    dev = _sub(root, "devices")
    _sub(dev, "emulator", spec.emulator)
    for d in sorted(spec.disks, key=lambda d: d.dev):  # upstream sorts by device key
        _disk(dev, d)
    _sub(dev, "controller", type="usb", model="qemu-xhci")
    queues = min(spec.vcpus, 8)
    for nic in spec.nics:  # caller's order = guest device order (ens3, ens4, …)
        iface = _sub(dev, "interface", type="bridge")
        _sub(iface, "mac", address=nic.mac)
        _sub(iface, "source", bridge=nic.bridge)
        _sub(iface, "model", type="virtio")
        _sub(iface, "driver", name="vhost", queues=queues)
    _sub(dev, "input", type="tablet", bus="usb")
    _sub(dev, "input", type="keyboard", bus="usb")
    gfx = _sub(dev, "graphics", type="spice", autoport="yes", listen=spec.spice_listen)
    _sub(gfx, "listen", type="address", address=spec.spice_listen)
    _sub(dev, "audio", id=1, type="spice")
    serial = _sub(dev, "serial", type="pty")
    target = _sub(serial, "target", type="isa-serial", port=0)
    _sub(target, "model", name="isa-serial")
    for kind, port in (("serial", 0), ("virtio", 1)):
        console = _sub(dev, "console", type="pty")
        _sub(console, "target", type=kind, port=port)
    if windows:
        chan = _sub(dev, "channel", type="spicevmc")
        _sub(chan, "target", type="virtio", name="com.redhat.spice.0")
        _sub(dev, "sound", model="ich9")
        video = _sub(dev, "video")
        _sub(video, "model", type="qxl", ram=65536, vram=65536, vgamem=65536, heads=1, primary="yes")
        _sub(dev, "redirdev", bus="usb", type="spicevmc")
        if uefi:
            tpm = _sub(dev, "tpm", model="tpm-crb")
            _sub(tpm, "backend", type="emulator", version="2.0")
    else:
        chan = _sub(dev, "channel", type="unix")
        _sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
        rng = _sub(dev, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")
        video = _sub(dev, "video")
        _sub(video, "model", type="virtio", heads=1, primary="yes")
    _sub(dev, "memballoon", model="virtio", autodeflate="on")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2, "mib": 1024 ** 2,
          "mb": 1000 ** 2, "g": 1024 ** 3, "gib": 1024 ** 3, "gb": 1000 ** 3, "t": 1024 ** 4,
          "tib": 1024 ** 4, "tb": 1000 ** 4}


def _bytes(el: ET.Element | None) -> int:
    if el is None or not (el.text or "").strip():
        return 0
    unit = _UNITS.get((el.get("unit") or "KiB").lower())  # libvirt's default unit is KiB
    if unit is None:
        raise ValueError(f"unknown memory unit {el.get('unit')!r}")
    return int(el.text.strip()) * unit


def parse_domain_xml(xml: str | bytes) -> dict[str, Any]:
    """{name, description, os_firmware, uefi, vcpus, memory (bytes), disks[], nics[], spice_listen}.

    disks: {dev, bus, device ("disk"|"cdrom"), type, protocol, source ("pool/volume"), pool,
    volume, hosts [(name, port)], secret_uuid, readonly}; nics: {mac, bridge, model}.
    Raises ValueError on anything that is not a single well-formed `<domain>` without a DTD.
    """
    text = xml.decode("utf-8") if isinstance(xml, bytes) else xml
    if len(text) > MAX_XML:
        raise ValueError("domain XML larger than 1 MiB")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("domain XML must not carry a DTD or entities")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"malformed domain XML: {e}") from None
    if root.tag != "domain":
        raise ValueError(f"root element is <{root.tag}>, not <domain>")
    vcpu = root.find("vcpu")
    try:
        vcpus = int((vcpu.text or "0").strip()) if vcpu is not None else 0
        memory = _bytes(root.find("memory"))
    except ValueError as e:
        raise ValueError(f"domain XML: {e}") from None
    os_el = root.find("os")
    disks = []
    for d in root.findall("devices/disk"):
        src = d.find("source")
        target = d.find("target")
        auth_secret = d.find("auth/secret")
        name = src.get("name", "") if src is not None else ""
        pool, _, volume = name.partition("/")
        disks.append({
            "dev": target.get("dev", "") if target is not None else "",
            "bus": target.get("bus", "") if target is not None else "",
            "device": d.get("device", "disk"), "type": d.get("type", ""),
            "protocol": src.get("protocol", "") if src is not None else "",
            "source": name, "pool": pool, "volume": volume,
            "hosts": [(h.get("name", ""), int(h.get("port") or 0)) for h in (src.findall("host") if src is not None else [])],
            "secret_uuid": auth_secret.get("uuid", "") if auth_secret is not None else "",
            "readonly": d.find("readonly") is not None,
        })
    nics = []
    for i in root.findall("devices/interface"):
        mac, src, model = i.find("mac"), i.find("source"), i.find("model")
        nics.append({"mac": (mac.get("address", "") if mac is not None else "").lower(),
                     "bridge": src.get("bridge", "") if src is not None else "",
                     "model": model.get("type", "") if model is not None else ""})
    spice_listen = ""
    gfx = root.find("devices/graphics[@type='spice']")
    if gfx is not None:
        listen = gfx.find("listen[@type='address']")
        spice_listen = listen.get("address", "") if listen is not None else gfx.get("listen", "")
    return {
        "name": (root.findtext("name") or "").strip(),
        "description": root.findtext("description") or "",
        "os_firmware": os_el.get("firmware", "") if os_el is not None else "",
        "uefi": os_el is not None and os_el.get("firmware") == "efi",
        "vcpus": vcpus, "memory": memory, "disks": disks, "nics": nics,
        "spice_listen": spice_listen,
    }
