"""IPsec pre-shared keys: stored sealed like agent keys, answered in clear only to those who
manage the connection, never logged.

Stored as `pre_shared_key_sealed` = kahuna.auth.secrets.seal(server secret, psk, associated = the
IPsec document's id), so a sealed value copied onto another connection does not open there (the
metadata profile opens it the same way for the appliance). On the API the key is write-only for
everyone but superAdmin and the project's projectAdmins, who read it in clear (they need it to
configure the remote end); others read `MASK`.
"""

from __future__ import annotations

from typing import Any

from kahuna.auth import policy
from kahuna.auth.principal import Principal
from kahuna.auth.secrets import seal, unseal

MASK = "********"


def seal_psk(server_secret: str, ipsec_id: str, psk: str) -> str:
    return seal(server_secret.encode(), psk, ipsec_id)


def open_psk(server_secret: str, doc: dict[str, Any]) -> str:
    """The clear key of a stored connection ("" when it cannot be opened: another secret)."""
    sealed = doc.get("pre_shared_key_sealed")
    if not sealed:
        return ""
    try:
        return unseal(server_secret.encode(), sealed, str(doc["_id"]))
    except ValueError:
        return ""


def may_read_psk(principal: Principal | None, project: dict[str, Any]) -> bool:
    if principal is None:
        return False
    if principal.is_super_admin:
        return True
    return principal.is_project_admin and policy.is_member(principal, project)


def psk_for(principal: Principal | None, project: dict[str, Any], server_secret: str, doc: dict[str, Any]) -> str:
    return open_psk(server_secret, doc) if may_read_psk(principal, project) else MASK
