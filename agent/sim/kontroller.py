"""A simulated Kontroller: the agent inside a Kawaii / Konvey appliance.

Like upstream's (`common/agents/kontroller*.go`) it boots from its cloud-init ISO: `meta-data`
names the hub (`kowabunga_controller_uri`), its agent id and key, and the metadata service. On
every `Reload` it re-reads the ISO, fetches its metadata profile over HTTP and "configures" what
the real appliance would template (keepalived VIPs, nftables firewall and NAT, strongSwan IPsec,
Traefik endpoints) -- here it records it, for tests to assert.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import trio

from .cidata import meta_data
from .model import SimError

FETCH_TIMEOUT = 10.0


def metadata_request(meta: dict[str, Any], url: str | None = None) -> tuple[str, dict[str, str]]:
    """The URL and headers of the profile fetch: the instance token (our metadata service) and
    upstream's source-IP header, so either kind of service can answer."""
    target = url or meta.get("kowabunga_metadata_uri")
    if not target:
        raise SimError("meta-data has no kowabunga_metadata_uri")
    headers = {"X-Kowabunga-Instance-Id": str(meta.get("instance-id", "")),
               "Accept": "application/json"}
    if meta.get("kowabunga_metadata_token"):
        headers["X-Kowabunga-Instance-Token"] = str(meta["kowabunga_metadata_token"])
    if meta.get("kowabunga_local_ip"):
        headers["X-Kowabunga-Source-Ip"] = str(meta["kowabunga_local_ip"])
    return target, headers


def _fetch(url: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise SimError(f"metadata: HTTP {exc.code} from {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SimError(f"metadata: {url}: {exc}") from None
    try:
        profile = json.loads(body)
    except ValueError:
        raise SimError(f"metadata: not JSON ({len(body)} bytes) from {url}") from None
    if not isinstance(profile, dict):
        raise SimError("metadata: the profile is not a JSON object")
    return profile


def configuration(profile: dict[str, Any]) -> dict[str, Any]:
    """What the appliance would apply, from its profile (upstream-tenant.md §10)."""
    kawaii, konvey = profile.get("kawaii") or {}, profile.get("konvey") or {}
    out: dict[str, Any] = {"kind": "kawaii" if kawaii else "konvey" if konvey else None,
                           "vips": [], "firewall": {}, "nat": [], "ipsec": [], "endpoints": [],
                           "peers": list(profile.get("peers") or [])}
    if kawaii:
        out["vips"] = list(kawaii.get("virtual_ips") or [])
        out["public_vips"] = list(kawaii.get("public_vip_addresses") or [])
        out["public_gw"] = kawaii.get("public_gw_address")
        out["firewall"] = {key: kawaii.get(f"fw_{key}") for key in (
            "input_default", "output_default", "forward_default", "input_extra_networks",
            "input_rules", "output_rules", "forward_rules")}
        out["nat"] = list(kawaii.get("fw_nat_rules") or [])
        out["ipsec"] = list(kawaii.get("ipsec_connections") or [])
    if konvey:
        out["vips"] = list(konvey.get("virtual_ips") or [])
        out["endpoints"] = list(konvey.get("endpoints") or [])
    # keepalived: one vrrp_instance per distinct vrrp_id, holding all its VIPs
    vrrp: dict[int, list[str]] = {}
    for vip in out["vips"]:
        vrrp.setdefault(vip.get("vrrp_id"), []).append(vip.get("vip"))
    out["vrrp_instances"] = vrrp
    return out


class KontrollerModel:
    """State of one appliance agent; `read_iso()` returns the ISO's files as they are now."""

    def __init__(self, read_iso: Callable[[], dict[str, str]] | None = None, *,
                 metadata_url: str | None = None) -> None:
        self.read_iso = read_iso
        self.metadata_url = metadata_url
        self.reloads = 0
        self.errors: list[str] = []
        self.profile: dict[str, Any] | None = None
        self.config: dict[str, Any] = configuration({})
        self.requests: list[dict[str, str]] = []       # headers of each fetch (tests check them)
        self._lock = threading.Lock()

    def meta(self) -> dict[str, Any]:
        if self.read_iso is None:
            raise SimError("no cloud-init ISO attached (/dev/sr0)")
        return meta_data(self.read_iso())

    async def reload(self) -> None:
        try:
            url, headers = metadata_request(self.meta(), self.metadata_url)
            with trio.fail_after(FETCH_TIMEOUT + 2):
                profile = await trio.to_thread.run_sync(_fetch, url, headers)
        except (SimError, trio.TooSlowError) as exc:
            message = str(exc) or "metadata: timed out"
            with self._lock:
                self.errors.append(message)
            raise SimError(message) from None
        with self._lock:
            self.requests.append({k: ("<set>" if "Token" in k else v) for k, v in headers.items()})
            self.profile = profile
            self.config = configuration(profile)
            self.reloads += 1

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"reloads": self.reloads, "errors": list(self.errors),
                    "profile": json.loads(json.dumps(self.profile)), "requests": list(self.requests),
                    **json.loads(json.dumps(self.config))}
