"""What a cloud-init rendering needs, as plain data (no store, no agents: compute fills it in).

Upstream (`cloud-init.go`) reads the project, zone, adapters and subnets from the database while
rendering; here the caller gathers those facts once and the rendering is a pure function of this
dataclass, so the same profile always gives the same files (when the root password is given
already hashed) and `kahuna.cloudinit.digest` tells whether an ISO must be rebuilt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LINUX, WINDOWS = "linux", "windows"
APPLIANCES = ("kawaii", "konvey")
# upstream's hostname check (RFC 1123 labels, `_` allowed): the name lands in shell lines too
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*")


@dataclass(frozen=True)
class NetAdapter:
    """One NIC of the instance, in device order (public adapter first, then private ones).

    mac: `da:1e:70:…`; cidr: the adapter's subnet (`10.0.0.0/24`); addresses: plain IPs on that
    subnet (none for a public NIC without an address); gateway: the subnet's gateway (upstream's
    VLANGateway); dns: the subnet's DNS server ("" = none); routes: the subnet's extra routes.
    """

    mac: str
    cidr: str
    addresses: tuple[str, ...] = ()
    gateway: str = ""
    dns: str = ""
    routes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CloudInitProfile:
    """Upstream's user_data / meta_data / network_config variables (upstream-tenant.md §5), plus ours.

    os: "linux" or "windows" (the OS template's os); profile: "" for an ordinary instance,
    "kawaii" or "konvey" for an appliance. root_password: plaintext (hashed at render for Linux;
    Windows sets it with PowerShell so it needs the plaintext); root_password_hash: a `$6$` hash
    (`kahuna.cloudinit.hash_password`) — give it (kept in the instance document) to get
    byte-identical renders across calls. metadata_url: `publicUrl + /latest/meta-data`.
    local_ip: the instance's private IP (first address of its first private adapter).
    metadata_token: the per-instance token (meta-data `kowabunga_metadata_token`), "" = none.
    controller_*: the appliance's Kontroller agent (meta-data keys of upstream §6.4), empty for
    ordinary instances. zone_gateway: the project's gateway address in this instance's zone
    (upstream's InternetGateway when it lies in an adapter's subnet).
    """

    hostname: str
    instance_id: str
    os: str = LINUX
    profile: str = ""
    domain: str = ""
    region: str = ""
    zone: str = ""
    root_password: str = field(default="", repr=False)
    root_password_hash: str = field(default="", repr=False)
    service_user: str = ""
    service_user_pubkey: str = ""
    metadata_url: str = ""
    local_ip: str = ""
    metadata_token: str = field(default="", repr=False)
    controller_url: str = ""
    controller_agent_id: str = ""
    controller_agent_token: str = field(default="", repr=False)
    zone_gateway: str = ""
    adapters: tuple[NetAdapter, ...] = ()

    def __post_init__(self) -> None:
        if not _HOSTNAME.fullmatch(self.hostname) or len(self.hostname) > 253:
            raise ValueError(f"hostname {self.hostname!r} is not an RFC 1123 host name")
        if self.os not in (LINUX, WINDOWS):
            raise ValueError(f"os must be {LINUX!r} or {WINDOWS!r}, not {self.os!r}")
        if self.profile not in ("",) + APPLIANCES:
            raise ValueError(f"profile must be '', 'kawaii' or 'konvey', not {self.profile!r}")
