"""The one module that decides who may do what. Every API route declares one of these rules;
registering a route with an unknown rule fails at start (and in the route table test).

Rules:
- public: no authentication (login, password reset request, confirmation pages, health)
- authenticated: any authenticated caller
- admin: superAdmin (the role or the master API key)
"""

from __future__ import annotations

from kahuna.auth.principal import Principal

RULES = ("public", "authenticated", "admin")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown access rule {rule!r} (known: {', '.join(RULES)})")
    return rule


def allowed(rule: str, principal: Principal | None) -> bool:
    """May `principal` (None = anonymous) pass a route guarded by `rule`?"""
    if rule == "public":
        return True
    if principal is None:
        return False
    if rule == "authenticated":
        return True
    return principal.is_super_admin
