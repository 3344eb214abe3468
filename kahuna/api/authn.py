"""Authentication of API requests: who is calling, from the request headers.

For now the master API key (constant-time compare); JWT and user API keys plug in here.
"""

from __future__ import annotations

from kahuna.auth.principal import MASTER, Principal
from kahuna.auth.secrets import equal
from kahuna.resources.errors import Unauthorized


class HeaderAuthenticator:
    def __init__(self, master_key: str) -> None:
        self._master_key = master_key

    async def __call__(self, headers) -> Principal | None:
        key = headers.get("X-API-Key")
        bearer = headers.get("Authorization")
        if key is None and bearer is None:
            return None
        if key is not None:
            if self._master_key and equal(key, self._master_key):
                return MASTER
            raise Unauthorized("invalid API key")
        raise Unauthorized("invalid credentials")
