"""Who is calling: the result of authentication, the input of the access policy."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("superAdmin", "projectAdmin", "user")


@dataclass(frozen=True)
class Principal:
    role: str  # one of ROLES
    via: str  # "master-key", "jwt", "api-key"
    user_id: str | None = None  # None for the master key
    email: str = ""
    team_ids: frozenset[str] = field(default_factory=frozenset)
    session_id: str | None = None  # the JWT's jti (what logout revokes)
    token_id: str | None = None  # the API key's token document

    @property
    def is_super_admin(self) -> bool:
        return self.role == "superAdmin"

    @property
    def is_project_admin(self) -> bool:
        """projectAdmin or above (upstream's IsProjectAdmin is true for superAdmin too)."""
        return self.role in ("superAdmin", "projectAdmin")


MASTER = Principal(role="superAdmin", via="master-key")
