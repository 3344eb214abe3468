"""Who is asking for metadata: an instance proven by its token, or by its real source address.

Way 1 (ours): `X-Kowabunga-Instance-Id` + `X-Kowabunga-Instance-Token`. The token is an HMAC of
the id and the instance's `metadata_generation` (`kahuna.auth.instance_tokens`): the check itself needs
no token table. The generation, however, must be the *current* one (so that rotating it revokes
old tokens), so the instance document is read once by id — the read the profile needs anyway,
served by the store's id cache when it is enabled.

Way 2 (upstream's headers, `global.metadata.legacyHeaders`): `X-Kowabunga-Instance-Id` +
`X-Kowabunga-Source-Ip`. Upstream trusts the declared address; we accept it only when the real
source address of the request (the TCP peer, or the X-Forwarded-For entry appended by a trusted
proxy) is the instance's own private address, or a public address of its project's Kawaii in the
instance's region (the NAT the instance egresses through), and the declared address is the
instance's `local_ip`. The NAT address is shared by every instance of the project, so it is not
accepted for an appliance instance (Kawaii/Konvey), whose profile holds secrets: those prove
themselves with their token (as Kahuna's ISOs let them) or come from their own private address.

Every refusal after the header check is the same 403, whether the id is unknown, the token wrong
or the source foreign: the caller cannot learn which instance ids exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kahuna.auth.instance_tokens import verify
from kahuna.resources.errors import Forbidden, Unauthorized, Unavailable
from kahuna.store import errors as store_errors
from kahuna.store.base import is_valid_id

APPLIANCES = ("kawaii", "konvey")
ID_HEADER = "X-Kowabunga-Instance-Id"
TOKEN_HEADER = "X-Kowabunga-Instance-Token"
SOURCE_HEADER = "X-Kowabunga-Source-Ip"

REFUSED = "this instance's metadata cannot be read with these credentials from this address"


@dataclass(frozen=True)
class Caller:
    instance: dict[str, Any]
    way: str  # "token" | "source"


def strip_port(value: str) -> str:
    """`10.0.0.5:1234` -> `10.0.0.5`, `[fd00::1]:80` -> `fd00::1` (upstream cuts any `:port`)."""
    value = value.strip()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def requested_id(headers: Mapping[str, str]) -> str:
    """The declared instance id (401 when credentials are absent altogether)."""
    instance_id = (headers.get(ID_HEADER) or "").strip()
    if not instance_id or not (headers.get(TOKEN_HEADER) or headers.get(SOURCE_HEADER)):
        raise Unauthorized(f"send {ID_HEADER} with {TOKEN_HEADER} (or {SOURCE_HEADER})")
    return instance_id


async def identify(store, server_secret: str, headers: Mapping[str, str], source: str, *,
                   legacy_headers: bool) -> Caller:
    instance_id = requested_id(headers)
    token = headers.get(TOKEN_HEADER)
    if not token and not legacy_headers:
        raise Unauthorized(f"send {ID_HEADER} and {TOKEN_HEADER} (upstream's source headers are disabled)")
    instance = await _instance(store, instance_id)
    if token:
        generation = int(instance.get("metadata_generation") or 0) if instance else 0
        ok = verify(server_secret, instance_id, generation, token)
        if instance is None or not ok:
            raise Forbidden(REFUSED)
        return Caller(instance, "token")
    declared = strip_port(headers.get(SOURCE_HEADER) or "")
    if instance is None or not instance.get("local_ip") or declared != instance["local_ip"]:
        raise Forbidden(REFUSED)
    real = strip_port(source)
    if real == instance["local_ip"]:
        return Caller(instance, "source")
    # behind the NAT every instance of the project has the same address: good enough for an
    # ordinary profile (no secret in it), never for an appliance's (PSKs, VRRP data)
    if instance.get("profile") not in APPLIANCES and real in await kawaii_public_ips(store, instance):
        return Caller(instance, "source")
    raise Forbidden(REFUSED)


async def _instance(store, instance_id: str) -> dict[str, Any] | None:
    if not is_valid_id(instance_id):
        return None
    try:
        return await store.get("instance", instance_id)
    except store_errors.NotFound:
        return None
    except store_errors.Unavailable as exc:
        raise Unavailable(f"database unavailable: {exc}") from None


async def get_doc(store, collection: str, doc_id: Any) -> dict[str, Any]:
    """The document, or {} when the id is not a valid id or names nothing."""
    if not is_valid_id(doc_id):
        return {}
    try:
        return await store.get(collection, doc_id)
    except store_errors.NotFound:
        return {}


async def instance_region(store, instance: Mapping[str, Any]) -> str | None:
    """The region id of the instance: its own field, else via its Kaktus's zone."""
    if instance.get("region_id"):
        return instance["region_id"]
    zone_id = instance.get("zone_id")
    if not zone_id:
        kaktus = await get_doc(store, "kaktus", instance.get("kaktus_id"))
        zone_id = kaktus.get("zone_id") if kaktus else None
    zone = await get_doc(store, "zone", zone_id)
    return zone.get("region_id") if zone else None


async def kawaii_public_ips(store, instance: Mapping[str, Any]) -> set[str]:
    """Public addresses (VIPs) of the Kawaii of the instance's project in the instance's region."""
    project_id = instance.get("project_id")
    if not project_id:
        return set()
    region_id = await instance_region(store, instance)
    out: set[str] = set()
    for kawaii in await store.find("kawaii", {"project_id": project_id}):
        if region_id and kawaii.get("region_id") == region_id:
            out.update(public_addresses(kawaii))
    return out


def public_addresses(kawaii: Mapping[str, Any]) -> set[str]:
    """The public VIPs a Kawaii document records (`public_vips`, and the API's `netip.public`)."""
    out = {a for a in kawaii.get("public_vips") or () if isinstance(a, str) and a}
    out.update(a for a in (kawaii.get("netip") or {}).get("public") or () if isinstance(a, str) and a)
    return out
