"""In-memory models of what upstream's agents manage, kept apart from the transport.

* `KaktusModel`: a hypervisor (libvirt domains and their lifecycle) plus its Ceph cluster (RBD
  pools and volumes, CephFS sub-volumes, NFS-Ganesha exports).
* `KiwiModel`: the DNS zones and A records served by Kiwi's built-in DNS server.
* `KontrollerModel`: an appliance agent that only reloads.

Errors are `SimError`s carrying the message the real agent would send back (libvirt's and
librbd's wording), so callers see the same error strings as with real agents.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit
from dataclasses import dataclass, field
from typing import Any

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


class SimError(Exception):
    """An error the simulated agent reports as the RPC `error` string."""


# ---------------------------------------------------------------------------------------- Kaktus

# InstanceOperation action codes (upstream common/proto)
OP_AUTOSTART, OP_START, OP_SOFT_REBOOT, OP_HARD_REBOOT = 0, 1, 2, 3
OP_HARD_SHUTDOWN, OP_SOFT_SHUTDOWN, OP_PM_SUSPEND, OP_PM_RESUME = 4, 5, 6, 7

RUNNING, PAUSED, SHUTOFF = "Running", "Paused", "Shutoff"

ENOENT = "rbd: ret=-2, No such file or directory"
EEXIST = "rbd: ret=-17, File exists"
ENOSPC = "rbd: ret=-28, No space left on device"
ENOTEMPTY = "rbd: ret=-39, Directory not empty"
EBUSY = "rbd: ret=-16, Device or resource busy"
NO_POOL = "rados: ret=-2, No such file or directory"
SNAPSHOT = "kowabunga"   # the protected snapshot upstream clones OS volumes from


def _not_running() -> SimError:
    return SimError("Requested operation is not valid: domain is not running")


@dataclass
class Instance:
    name: str
    xml: str
    uuid: str
    memory: int = 0                 # bytes, from the domain XML
    vcpus: int = 0
    state: str = SHUTOFF
    reason: str = "Unknown"
    autostart: bool = False
    spice_port: int | None = None   # fixed in the XML, or assigned while running
    fixed_spice_port: bool = False
    boots: int = 0
    disks: list[dict[str, Any]] = field(default_factory=list)
    nics: list[dict[str, Any]] = field(default_factory=list)
    spice_listen: str | None = None
    migrations: int = 0
    acpi: bool = True               # False: a guest that ignores ACPI shutdown requests (hung, no agent)

    def apply(self, info: dict[str, Any]) -> None:
        """Keep what a (re-)definition says about the hardware."""
        self.memory, self.vcpus = info.get("memory") or self.memory, info["vcpus"]
        self.disks, self.nics = info["disks"], info["nics"]
        self.spice_listen = info["spice"]["listen"]

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "uuid": self.uuid, "vcpus": self.vcpus, "memory": self.memory,
                "state": self.state, "reason": self.reason, "autostart": self.autostart,
                "boots": self.boots, "migrations": self.migrations,
                "disks": [dict(d) for d in self.disks], "nics": [dict(n) for n in self.nics],
                "spice": {"listen": self.spice_listen, "port": self.spice_port}, "xml": self.xml}

    @property
    def running(self) -> bool:
        return self.state in (RUNNING, PAUSED)


@dataclass
class Volume:
    name: str
    size: int
    kind: str                        # raw, template, os, iso
    parent: str | None = None        # template an OS volume was cloned from
    source_url: str | None = None
    content: bytes | None = None
    snapshots: set[str] = field(default_factory=set)
    children: set[str] = field(default_factory=set)


@dataclass
class Pool:
    name: str
    capacity: int
    volumes: dict[str, Volume] = field(default_factory=dict)

    @property
    def allocated(self) -> int:
        return sum(v.size for v in self.volumes.values())


_MEMORY_UNITS = {"b": 1, "B": 1, "bytes": 1, "KB": 1000, "KiB": KiB, "k": KiB, "K": KiB,
                 "MB": 1000**2, "MiB": MiB, "M": MiB, "m": MiB, "GB": 1000**3, "GiB": GiB,
                 "G": GiB, "g": GiB, "TiB": TiB, "T": TiB}


def parse_domain(xml: str) -> dict[str, Any]:
    """What libvirt keeps of a domain definition: parsed with a real XML parser, as libvirtd
    rejects what is not well-formed; unknown elements are kept in the XML only."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SimError(f"XML error: {exc}") from None
    if root.tag != "domain":
        raise SimError("XML error: unexpected root element <%s>, expecting <domain>" % root.tag)
    info: dict[str, Any] = {"name": (root.findtext("name") or "").strip(),
                            "uuid": (root.findtext("uuid") or "").strip() or None,
                            "memory": 0, "vcpus": 0}
    memory = root.find("memory")
    if memory is not None:
        text = (memory.text or "").strip()
        if not text.isdigit():
            raise SimError("XML error: could not parse memory size")
        unit = memory.get("unit", "KiB")
        if unit not in _MEMORY_UNITS:
            raise SimError(f"XML error: unknown memory unit '{unit}'")
        info["memory"] = int(text) * _MEMORY_UNITS[unit]
    vcpu = (root.findtext("vcpu") or "").strip()
    if vcpu and not vcpu.isdigit():
        raise SimError("XML error: maximum vcpus count must be an integer")
    info["vcpus"] = int(vcpu) if vcpu else 0
    disks, nics = [], []
    spice: dict[str, Any] = {"listen": None, "port": None}
    devices = root.find("devices")
    for disk in (devices.findall("disk") if devices is not None else []):
        source, target = disk.find("source"), disk.find("target")
        entry: dict[str, Any] = {"device": disk.get("device", "disk"), "type": disk.get("type"),
                                 "pool": None, "volume": None, "file": None,
                                 "target": target.get("dev") if target is not None else None,
                                 "bus": target.get("bus") if target is not None else None,
                                 "readonly": disk.find("readonly") is not None,
                                 "serial": (disk.findtext("serial") or "").strip() or None}
        if source is not None:
            if source.get("protocol") == "rbd" or "/" in (source.get("name") or ""):
                pool, _, volume = (source.get("name") or "").partition("/")
                entry["pool"], entry["volume"] = pool or None, volume or None
                host = source.find("host")
                if host is not None:
                    entry["host"] = f"{host.get('name')}:{host.get('port', '6789')}"
            entry["file"] = source.get("file")
        disks.append(entry)
    for nic in (devices.findall("interface") if devices is not None else []):
        mac, source, model = nic.find("mac"), nic.find("source"), nic.find("model")
        nics.append({"type": nic.get("type"),
                     "mac": (mac.get("address") or "").lower() if mac is not None else None,
                     "bridge": source.get("bridge") if source is not None else None,
                     "network": source.get("network") if source is not None else None,
                     "model": model.get("type") if model is not None else None})
    for graphics in (devices.findall("graphics") if devices is not None else []):
        if graphics.get("type") != "spice":
            continue
        port = graphics.get("port", "-1")
        if port.lstrip("-").isdigit() and int(port) > 0:
            spice["port"] = int(port)
        listen = graphics.get("listen")
        element = graphics.find("listen")
        if element is not None and element.get("address"):
            listen = element.get("address")
        spice["listen"] = listen
    info.update(disks=disks, nics=nics, spice=spice)
    return info


def _parse_domain(name: str, xml: str) -> dict[str, Any]:
    info = parse_domain(xml)
    if info["name"] and info["name"] != name:
        raise SimError(f"XML error: domain name '{info['name']}' does not match '{name}'")
    info["spice_port"] = info["spice"]["port"]
    return info


class LibvirtRegistry:
    """The libvirt endpoints of the simulated Kaktus of one process, so that `MigrateInstance`
    finds its destination as libvirt would through `qemu+tcp://address:port/system`."""

    def __init__(self) -> None:
        self._hosts: dict[tuple[str, int], "KaktusModel"] = {}
        self._next_port = 16509

    def allocate_port(self) -> int:
        port, self._next_port = self._next_port, self._next_port + 1
        return port

    def register(self, model: "KaktusModel") -> None:
        self._hosts[(model.libvirt_address, model.libvirt_port)] = model

    def unregister(self, model: "KaktusModel") -> None:
        if self._hosts.get((model.libvirt_address, model.libvirt_port)) is model:
            del self._hosts[(model.libvirt_address, model.libvirt_port)]

    def lookup(self, uri: str) -> "KaktusModel":
        parts = urlsplit(uri)
        if not parts.scheme.startswith("qemu") or not parts.hostname:
            raise SimError(f"invalid argument: unable to parse URI {uri}")
        host = self._hosts.get((parts.hostname, parts.port or 16509))
        if host is None:
            raise SimError(f"unable to connect to server at '{parts.hostname}:{parts.port or 16509}': "
                           "Connection refused")
        return host


REGISTRY = LibvirtRegistry()


def template_size(url: str) -> int:
    """Deterministic raw size (2-8 GiB) of the image behind `url`, as if downloaded."""
    return (2 + hashlib.sha256(url.encode()).digest()[0] % 7) * GiB


class KaktusModel:
    def __init__(self, *, node: dict[str, Any] | None = None, pools: dict[str, int] | None = None,
                 auto_create_pools: bool = True, default_pool_capacity: int = 16 * TiB,
                 libvirt_address: str = "127.0.0.1", filesystems: list[str] | None = None,
                 template_sizes: dict[str, int] | None = None, libvirt_port: int | None = None,
                 libvirt_protocol: str = "tcp", registry: LibvirtRegistry | None = None) -> None:
        self.node = {"Arch": "x86_64", "Vendor": "AMD", "Model": "EPYC-Milan", "Sockets": 2,
                     "Cores": 64, "Threads": 128, "Memory": 512 * GiB,
                     "GuestEmulator": "/usr/bin/qemu-system-x86_64",
                     "GuestMachineName": "pc-q35-8.2"}
        self.node.update(node or {})
        self.instances: dict[str, Instance] = {}
        self.pools: dict[str, Pool] = {n: Pool(n, c) for n, c in (pools or {}).items()}
        self.auto_create_pools = auto_create_pools
        self.default_pool_capacity = default_pool_capacity
        self.libvirt_address = libvirt_address
        self.registry = registry if registry is not None else REGISTRY
        self.libvirt_port = libvirt_port or self.registry.allocate_port()
        self.libvirt_protocol = libvirt_protocol
        self.registry.register(self)
        self.filesystems: dict[str, dict[str, int]] = {fs: {} for fs in (filesystems or ["nfs"])}
        self.nfs_exports: dict[int, dict[str, Any]] = {}
        self.template_sizes = dict(template_sizes or {})

    # -------------------------------------------------------------- instances

    def instance(self, name: str) -> Instance:
        try:
            return self.instances[name]
        except KeyError:
            raise SimError(f"Domain not found: no domain with matching name '{name}'") from None

    def create_instance(self, name: str, xml: str) -> None:
        info = _parse_domain(name, xml)
        existing = self.instances.get(name)
        if existing is not None:
            raise SimError(f"operation failed: domain '{name}' already exists with uuid {existing.uuid}")
        inst = Instance(name, xml, info["uuid"] or str(uuidlib.uuid4()), info.get("memory", 0),
                        info["vcpus"], spice_port=info["spice_port"],
                        fixed_spice_port=info["spice_port"] is not None)
        inst.apply(info)
        self.instances[name] = inst

    def update_instance(self, name: str, xml: str) -> None:
        """libvirt's defineXML: redefines an existing domain (state kept) or defines a new one."""
        info = _parse_domain(name, xml)
        inst = self.instances.get(name)
        if inst is None:
            self.create_instance(name, xml)
            return
        if info["uuid"] and info["uuid"] != inst.uuid:
            raise SimError(f"operation failed: domain '{name}' already exists with uuid {inst.uuid}")
        inst.xml = xml
        inst.apply(info)
        if info["spice_port"] is not None:
            inst.spice_port, inst.fixed_spice_port = info["spice_port"], True

    def get_instance(self, name: str, migratable: bool = False) -> str:
        return self.instance(name).xml

    def delete_instance(self, name: str) -> None:
        self.instance(name)
        del self.instances[name]

    def instance_state(self, name: str) -> tuple[str, str]:
        inst = self.instance(name)
        return inst.state, inst.reason

    def is_running(self, name: str) -> bool:
        inst = self.instances.get(name)
        return inst is not None and inst.running

    def remote_url(self, name: str) -> str:
        inst = self.instance(name)
        return f"spice://{self.libvirt_address}:{inst.spice_port or 0}"

    def libvirt_endpoint(self) -> dict[str, Any]:
        return {"Protocol": self.libvirt_protocol, "Address": self.libvirt_address,
                "Port": self.libvirt_port}

    def migrate(self, name: str, destination_uri: str) -> None:
        """Live migration (peer-to-peer, persisted on the destination, undefined here): the
        domain keeps its definition and its running state; the RBD disks are shared storage."""
        inst = self.instance(name)
        target = self.registry.lookup(destination_uri)
        if target is self:
            raise SimError("Requested operation is not valid: cannot migrate a domain to the host it runs on")
        if not inst.running:
            raise _not_running()
        if name in target.instances:
            raise SimError(f"operation failed: domain '{name}' already exists with uuid "
                           f"{target.instances[name].uuid}")
        del self.instances[name]
        inst.migrations += 1
        if not inst.fixed_spice_port:
            inst.spice_port = None
        target.instances[name] = inst
        if not inst.fixed_spice_port:
            target.assign_spice_port(inst)

    def assign_spice_port(self, inst: Instance) -> None:
        used = {i.spice_port for i in self.instances.values() if i is not inst}
        port = 5900                      # libvirt's autoport: the lowest free one
        while port in used:
            port += 1
        inst.spice_port = port

    def close(self) -> None:
        """Forget this host's libvirt endpoint (no more a migration destination)."""
        self.registry.unregister(self)

    def _boot(self, inst: Instance, reason: str = "Booted") -> None:
        inst.state, inst.reason = RUNNING, reason
        inst.boots += 1
        if not inst.fixed_spice_port and inst.spice_port is None:
            used = {i.spice_port for i in self.instances.values()}
            port = 5900                      # libvirt's autoport: the lowest free one
            while port in used:
                port += 1
            inst.spice_port = port

    def _halt(self, inst: Instance, reason: str) -> None:
        inst.state, inst.reason = SHUTOFF, reason
        if not inst.fixed_spice_port:
            inst.spice_port = None

    def operation(self, name: str, action: int) -> None:
        inst = self.instance(name)
        if action == OP_AUTOSTART:
            inst.autostart = True
            action = OP_START
        if action == OP_START:
            if inst.running:
                raise SimError("Requested operation is not valid: domain is already running")
            self._boot(inst)
        elif action in (OP_SOFT_REBOOT, OP_HARD_REBOOT):
            if not inst.running:
                raise _not_running()
            self._boot(inst)
        elif action == OP_HARD_SHUTDOWN:
            if inst.running:
                self._halt(inst, "Destroyed")
        elif action == OP_SOFT_SHUTDOWN:
            if inst.running and inst.acpi:
                self._halt(inst, "Shutdown")
        elif action == OP_PM_SUSPEND:
            if not inst.running:
                raise _not_running()
            inst.state, inst.reason = PAUSED, "User"
        elif action == OP_PM_RESUME:
            if inst.state != PAUSED:
                raise SimError("Requested operation is not valid: domain is not paused")
            inst.state, inst.reason = RUNNING, "Unpaused"
        else:
            raise SimError(f"unsupported instance operation: {action}")

    # -------------------------------------------------------------- RBD

    def pool(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            if not self.auto_create_pools or not name:
                raise SimError(NO_POOL)
            pool = self.pools[name] = Pool(name, self.default_pool_capacity)
        return pool

    def volume(self, pool: str, name: str) -> Volume:
        volume = self.pool(pool).volumes.get(name)
        if volume is None:
            raise SimError(ENOENT)
        return volume

    def pool_stats(self, pool: str) -> tuple[int, int, int]:
        p = self.pool(pool)
        allocated = p.allocated
        return allocated, max(0, p.capacity - allocated), p.capacity

    def _new_volume(self, pool: str, volume: Volume) -> Volume:
        p = self.pool(pool)
        if volume.name in p.volumes:
            raise SimError(EEXIST)
        if p.allocated + volume.size > p.capacity:
            raise SimError(ENOSPC)
        p.volumes[volume.name] = volume
        return volume

    def create_raw_volume(self, pool: str, name: str, size: int) -> None:
        self._new_volume(pool, Volume(name, size, "raw"))

    def create_template_volume(self, pool: str, name: str, source_url: str) -> int:
        scheme = source_url.split("://", 1)[0] if "://" in source_url else ""
        if scheme not in ("http", "https"):
            raise SimError(f'Get "{source_url}": unsupported protocol scheme "{scheme}"')
        size = self.template_sizes.get(source_url) or template_size(source_url)
        self._new_volume(pool, Volume(name, size, "template", source_url=source_url))
        return size

    def create_os_volume(self, pool: str, name: str, size: int, template: str) -> None:
        parent = self.volume(pool, template)
        self._new_volume(pool, Volume(name, size, "os", parent=template))
        parent.snapshots.add(SNAPSHOT)
        parent.children.add(name)

    def create_iso_volume(self, pool: str, name: str, size: int, content: bytes) -> None:
        if len(content) != size:
            raise SimError(f"mismatch between RBD volume size ({size}) and data size ({len(content)})")
        self._new_volume(pool, Volume(name, size, "iso", content=content))

    def update_iso_volume(self, pool: str, name: str, size: int, content: bytes) -> None:
        volume = self.volume(pool, name)
        if len(content) != size:
            raise SimError(f"mismatch between RBD volume size ({size}) and data size ({len(content)})")
        volume.size, volume.content = size, content

    def volume_size(self, pool: str, name: str) -> int:
        return self.volume(pool, name).size

    def resize_volume(self, pool: str, name: str, size: int) -> None:
        volume = self.volume(pool, name)
        p = self.pools[pool]
        if size < volume.size:           # Kaktus resizes with allow_shrink=false
            raise SimError("rbd: ret=-22, Invalid argument: shrinking an image is not allowed")
        if p.allocated - volume.size + size > p.capacity:
            raise SimError(ENOSPC)
        volume.size = size

    def delete_volume(self, pool: str, name: str, with_snapshots: bool = False) -> None:
        volume = self.volume(pool, name)
        if volume.snapshots:
            if not with_snapshots:
                raise SimError(ENOTEMPTY)
            if volume.children:          # a protected snapshot with clones cannot be unprotected
                raise SimError(EBUSY)
        p = self.pools[pool]
        del p.volumes[name]
        if volume.parent and volume.parent in p.volumes:
            p.volumes[volume.parent].children.discard(name)

    # -------------------------------------------------------------- CephFS / NFS

    def list_filesystems(self) -> list[str]:
        return sorted(self.filesystems)

    def _fs(self, fs: str) -> dict[str, int]:
        try:
            return self.filesystems[fs]
        except KeyError:
            raise SimError(f"Error ENOENT: volume '{fs}' does not exist") from None

    def list_subvolumes(self, fs: str) -> list[str]:
        return sorted(self._fs(fs))

    def create_subvolume(self, fs: str, name: str) -> tuple[str, int]:
        subvolumes = self._fs(fs)
        subvolumes.setdefault(name, 0)    # like `ceph fs subvolume create`: idempotent
        return self.subvolume_path(fs, name), subvolumes[name]

    @staticmethod
    def subvolume_path(fs: str, name: str) -> str:
        return f"/volumes/_nogroup/{name}/{uuidlib.uuid5(uuidlib.NAMESPACE_URL, fs + '/' + name)}"

    def delete_subvolume(self, fs: str, name: str) -> None:
        subvolumes = self._fs(fs)
        if name not in subvolumes:
            raise SimError(f"Error ENOENT: subvolume '{name}' does not exist")
        del subvolumes[name]

    def create_nfs_backends(self, export: dict[str, Any]) -> None:
        if export["ID"] in self.nfs_exports:
            raise SimError(f"export {export['ID']} already exists")
        self._fs(export["FS"])
        self.nfs_exports[export["ID"]] = export

    def update_nfs_backends(self, export: dict[str, Any]) -> None:
        if export["ID"] not in self.nfs_exports:
            raise SimError(f"export {export['ID']} does not exist")
        self.nfs_exports[export["ID"]] = export

    def delete_nfs_backends(self, export_id: int) -> None:
        self.nfs_exports.pop(export_id, None)


# ---------------------------------------------------------------------------------------- Kiwi

class KiwiModel:
    """Zones and A records; keys are FQDNs with the trailing dot, as in Kiwi's DNS server."""

    def __init__(self) -> None:
        self.zones: dict[str, dict[str, list[str]]] = {}
        self.reloads = 0

    @staticmethod
    def _zone_name(domain: str) -> str:
        return domain.strip().rstrip(".").lower()

    @staticmethod
    def fqdn(entry: str, domain: str) -> str:
        return f"{entry.strip().rstrip('.')}.{domain.strip().rstrip('.')}.".lower()

    def reload(self, domains: list[dict[str, Any]]) -> None:
        """Replace everything (non-A records are ignored, as Kiwi serves A records only)."""
        zones: dict[str, dict[str, list[str]]] = {}
        for domain in domains:
            zone = zones.setdefault(self._zone_name(domain["Name"]), {})
            for record in domain.get("Records") or []:
                if record.get("Type", "A") == "A":
                    zone[record["Name"].strip().rstrip(".").lower()] = list(record.get("Addresses") or [])
        self.zones = zones
        self.reloads += 1

    def create_zone(self, domain: str) -> None:
        self.zones.setdefault(self._zone_name(domain), {})

    def delete_zone(self, domain: str) -> None:
        self.zones.pop(self._zone_name(domain), None)

    def create_record(self, domain: str, entry: str, addresses: list[str]) -> None:
        zone = self.zones.setdefault(self._zone_name(domain), {})
        key = entry.strip().rstrip(".").lower()
        if key in zone:
            raise SimError(f"record {self.fqdn(entry, domain)} already exists")
        zone[key] = list(addresses)

    def update_record(self, domain: str, entry: str, addresses: list[str]) -> None:
        zone = self.zones.get(self._zone_name(domain), {})
        key = entry.strip().rstrip(".").lower()
        if key not in zone:
            raise SimError(f"record {self.fqdn(entry, domain)} does not exist")
        zone[key] = list(addresses)

    def delete_record(self, domain: str, entry: str) -> None:
        self.zones.get(self._zone_name(domain), {}).pop(entry.strip().rstrip(".").lower(), None)

    def resolve(self, name: str) -> list[str]:
        """The A addresses served for `name` (empty when none: Kiwi would forward)."""
        name = name.strip().rstrip(".").lower()
        for zone_name, records in self.zones.items():
            suffix = "." + zone_name
            if name.endswith(suffix) and name[: -len(suffix)] in records:
                return list(records[name[: -len(suffix)]])
        return []

    def records(self) -> dict[str, list[str]]:
        return {f"{entry}.{zone}.": list(addrs) for zone, records in self.zones.items()
                for entry, addrs in records.items()}


# ---------------------------------------------------------------------------------------- Kontroller

class KontrollerModel:
    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1
