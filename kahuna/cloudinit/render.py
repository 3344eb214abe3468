"""Render the three NoCloud files from Jinja2 templates kept as package files.

Templates live in `kahuna/cloudinit/templates/{linux,windows}/{user-data,meta-data,network-config}.j2`
(package data). An operator replaces any of them with `cloudinit.{linux,windows}.{userData,
metaData,networkConfig}` in kahuna.yml: those name *Jinja2* files receiving the same variables
(upstream's names: Hostname, Domain, RootPasswordHash, ServiceUser, ServiceUserPubKey, Profile,
MetadataAlias, InterfacesSubnet, Region, Zone, InstanceID, MetadataEndpoint, LocalIP,
MetadataToken, ControllerEndpoint, ControllerAgentID, ControllerAgentToken, Adapters[] with
Device, MAC, Private, Addresses, GatewayEnabled, VLANGateway, InternetGateway, Profile, DNS,
Domain, Routes). Upstream's Go templates cannot be run as they are; the filters `yq` (quoted YAML
scalar), `ps` (single-quoted PowerShell literal), `sh` (shell word), `b64encode` and `sha512`
cover what they did.

StrictUndefined: a typo in an operator's template fails the render (a clear error at create),
instead of writing an empty value into a VM's boot configuration.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shlex
from functools import lru_cache
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from kahuna.cloudinit.profile import WINDOWS, CloudInitProfile, NetAdapter
from kahuna.cloudinit.shacrypt import hash_password

FILES = ("user-data", "meta-data", "network-config")
# kahuna.yml keys (kahuna.config.CloudInit.{linux,windows}) -> file names
CONFIG_KEYS = {"userData": "user-data", "metaData": "meta-data", "networkConfig": "network-config"}

_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


class TemplateError(ValueError):
    """A template (usually an operator's override) failed to render; the message names which."""


def _yq(value: Any) -> str:
    """A YAML double-quoted scalar that nothing can escape: printable ASCII as is, everything else
    (quotes, backslashes, line breaks, C1 controls, U+2028, astral characters) as YAML escapes,
    which PyYAML (cloud-init's parser) reads back exactly."""
    out = ['"']
    for ch in "" if value is None else str(value):
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


# PowerShell treats these as single quotes too (a lone one would end the literal)
_PS_QUOTES = ("'", "\u2018", "\u2019", "\u201a", "\u201b")


def _ps(value: Any) -> str:
    """A PowerShell single-quoted literal (no `$` expansion; every kind of single quote doubled)."""
    text = str(value)
    for q in _PS_QUOTES:
        text = text.replace(q, q + q)
    return "'" + text + "'"


def _sh(value: Any) -> str:
    """A POSIX shell word (for runcmd lines, which cloud-init runs through sh)."""
    return shlex.quote(str(value))


def _b64encode(value: Any) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _env() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(yq=_yq, ps=_ps, sh=_sh, b64encode=_b64encode, sha512=hash_password)
    return env


_ENV = _env()


@lru_cache(maxsize=64)
def _compiled(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


@lru_cache(maxsize=None)
def _package_text(name: str) -> str:
    return resources.files("kahuna.cloudinit").joinpath("templates", name).read_text(encoding="utf-8")


def default_template(os: str, name: str) -> str:
    """The shipped template text for `os` ("linux"/"windows") and a file name of FILES."""
    return _package_text(f"{os}/{name}.j2")


def kw_meta_script() -> str:
    """The `/usr/bin/kw-meta` helper written by the Linux user-data (upstream's MetadataAlias)."""
    return _package_text("kw-meta.sh")


def templates_from_config(cloudinit_cfg: Any, os: str) -> dict[str, str]:
    """Operator overrides read from the files `kahuna.config.CloudInit` names for `os`
    ({"user-data": text, ...}; files absent from the config keep the shipped template)."""
    paths: Mapping[str, str] = getattr(cloudinit_cfg, os, None) or {}
    return {CONFIG_KEYS[k]: Path(p).read_text(encoding="utf-8") for k, p in paths.items() if k in CONFIG_KEYS}


def _is_private(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return any(net.subnet_of(r) for r in _RFC1918 if r.version == net.version)


def device_name(os: str, index: int) -> str:
    """Guest NIC names, as upstream: Linux `ens3, ens4, …`, Windows `interface0, …`."""
    return f"interface{index}" if os == WINDOWS else f"ens{3 + index}"


def _adapter_vars(p: CloudInitProfile, index: int, a: NetAdapter) -> dict[str, Any]:
    """Upstream's NetworkConfigSettings for one adapter (cloud-init.go:SetNetworkConfig)."""
    net = ipaddress.ip_network(a.cidr, strict=False)
    private = _is_private(a.cidr)
    gw_enabled, internet_gw = False, ""
    if p.zone_gateway:
        try:
            if ipaddress.ip_address(p.zone_gateway) in net:
                gw_enabled, internet_gw = True, p.zone_gateway
        except ValueError:
            raise TemplateError(f"zone gateway {p.zone_gateway!r} is not an IP address") from None
    if not private:
        gw_enabled = True
    out = {"Device": device_name(p.os, index), "MAC": a.mac, "Private": private,
           "Addresses": [f"{ip}/{net.prefixlen}" for ip in a.addresses],
           "GatewayEnabled": gw_enabled, "VLANGateway": a.gateway, "InternetGateway": internet_gw,
           "Profile": p.profile, "DNS": a.dns, "Domain": p.domain if private else "",
           "Routes": list(a.routes)}
    if p.profile == "kawaii" and index >= 2:  # VPC peering NICs: no routes, DNS, domain
        out.update(GatewayEnabled=False, Routes=[], Domain="", DNS="")
    return out


def variables(p: CloudInitProfile) -> dict[str, Any]:
    """The template context (secrets included: never log it)."""
    if p.os == WINDOWS and not p.root_password:
        raise TemplateError("a Windows instance needs the plaintext root password (set by PowerShell)")
    adapters = [_adapter_vars(p, i, a) for i, a in enumerate(p.adapters)]
    pw_hash = p.root_password_hash or (hash_password(p.root_password) if p.root_password else "!")
    return {
        "Hostname": p.hostname, "Domain": p.domain, "RootPassword": p.root_password,
        "RootPasswordHash": pw_hash, "ServiceUser": p.service_user,
        "ServiceUserPubKey": p.service_user_pubkey, "Profile": p.profile,
        "MetadataAlias": kw_meta_script(),
        "InterfacesSubnet": {a["Device"]: {"Gateway": a["VLANGateway"], "Routes": a["Routes"]}
                             for a in adapters},
        "Region": p.region, "Zone": p.zone, "InstanceID": p.instance_id,
        "MetadataEndpoint": p.metadata_url, "LocalIP": p.local_ip, "MetadataToken": p.metadata_token,
        "ControllerEndpoint": p.controller_url, "ControllerAgentID": p.controller_agent_id,
        "ControllerAgentToken": p.controller_agent_token, "Adapters": adapters,
    }


def render(profile: CloudInitProfile, templates: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"user-data", "meta-data", "network-config"} for this profile.

    `templates` overrides the shipped template text per file name (see `templates_from_config`).
    Raises TemplateError naming the file when a template is broken.
    """
    context = variables(profile)
    out: dict[str, str] = {}
    for name in FILES:
        text = (templates or {}).get(name) or default_template(profile.os, name)
        try:
            rendered = _compiled(text).render(context)
        except jinja2.TemplateError as e:  # message names the template problem, never the values
            raise TemplateError(f"cloud-init {profile.os} {name} template: {e.message or type(e).__name__}") from None
        out[name] = rendered if rendered.endswith("\n") else rendered + "\n"
    return out


def controller_url(public_url: str) -> str:
    """The Kontroller WebSocket URI of upstream's meta-data (publicUrl, `http` -> `ws`)."""
    return public_url.replace("http", "ws", 1)


def digest(files: Mapping[str, str]) -> str:
    """A content digest of rendered files: a different digest means the ISO must be rebuilt.
    (ISO bytes carry timestamps, so compare this, not the image.)"""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name].encode()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()
