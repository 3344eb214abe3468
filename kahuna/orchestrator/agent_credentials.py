"""The hub's credential source, backed by the `agent` and `token` collections.

The hub asks `lookup(agent_id)` synchronously on every handshake: a reconnect storm of 10,000
agents must cost no database round trip. So every agent key is held in memory:
- from start (`load_all`: two queries, whatever the fleet size). The load keeps each key as
  its token stored it, sealed; `lookup` unseals it on the agent's first handshake (one AES-GCM
  open, a few microseconds, then the opened credential replaces the sealed entry). Unsealing
  all of them up front was a third of the load's CPU, on the path of a restarting daemon whose
  agents are waiting for it (issue 13, reconnect storm); a key that does not open is dropped at
  that lookup, exactly as the load used to drop it. What is held is what the load read: a key
  rotated or deleted afterwards is handled as before (`refresh`, `watch`), whether or not it was
  unsealed yet;
- on every change made through this process (`refresh(agent_id)`, called by the agent routes
  after creation, key rotation and deletion);
- when another process changed them (the admin CLI writes keys while the daemon runs): writers
  bump a marker document, and `watch` reloads everything when the marker moves (every second);
- on a miss (`prepare`, awaited by the hub before it verifies a handshake): an agent the CLI
  created a moment ago is read from the store at once. Misses are rate-limited (a token bucket
  plus a short memory of ids just found absent), so a flood of unknown ids cannot turn into a
  flood of reads.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import NamedTuple

import trio

from kahuna.auth import apikeys
from kahuna.hub.credentials import AgentCredential, InMemoryCredentials
from kahuna.logs import get_logger
from kahuna.resources.service import Resources
from kahuna.store.base import new_id
from kahuna.store.errors import Conflict

log = get_logger("kahuna.agents")

STATE_COLLECTION = "kahuna_state"
MARKER_ID = "000000000000000000000a9e"  # fixed id of the "agent credentials changed" marker
MISS_RATE, MISS_BURST = 10.0, 20  # store reads per second for unknown agent ids
MISS_MEMORY_SECONDS = 1.0  # an id just found absent is not read again before this
MISS_READ_SECONDS = 2.0


class _Sealed(NamedTuple):
    """An agent's credential as loaded, its key not unsealed yet (see the module docstring)."""

    agent_id: str
    agent_type: str
    sealed_key: str
    expire: object
    expiration_date: object

    def token(self) -> dict:
        """The token fields the credential is made of (the rest of the document is not kept)."""
        return {"parent_type": "agent", "agent_id": self.agent_id, "sealed_key": self.sealed_key,
                "expire": self.expire, "expiration_date": self.expiration_date}


class StoredAgentCredentials(InMemoryCredentials):
    def __init__(self, resources: Resources, server_secret: str) -> None:
        super().__init__()
        self.resources = resources
        self.server_secret = server_secret
        self._marker: str | None = None
        self._miss_tokens = float(MISS_BURST)
        self._miss_at = time.monotonic()
        self._absent: dict[str, float] = {}  # agent id -> when a miss read found nothing

    def lookup(self, agent_id: str) -> AgentCredential | None:
        cred = self._by_id.get(agent_id)
        if cred.__class__ is _Sealed:  # its first lookup since the load: open it, once
            cred = self._credential({"_id": agent_id, "type": cred.agent_type}, cred.token())
            if cred is None:  # does not open with this server secret (logged): as if not loaded
                del self._by_id[agent_id]
            else:
                self._by_id[agent_id] = cred
        return cred

    def __contains__(self, agent_id: object) -> bool:
        return isinstance(agent_id, str) and self.lookup(agent_id) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __iter__(self):
        return iter([c for c in map(self.lookup, list(self._by_id)) if c is not None])

    async def prepare(self, agent_id: str) -> None:
        """Before a handshake is verified: on a miss, read this one agent from the store."""
        if not agent_id or self.lookup(agent_id) is not None or len(agent_id) > 64:
            return
        now = time.monotonic()
        if now - self._absent.get(agent_id, -MISS_MEMORY_SECONDS) < MISS_MEMORY_SECONDS:
            return
        self._miss_tokens = min(MISS_BURST, self._miss_tokens + (now - self._miss_at) * MISS_RATE)
        self._miss_at = now
        if self._miss_tokens < 1:
            return
        self._miss_tokens -= 1
        try:
            with trio.move_on_after(MISS_READ_SECONDS):
                agents = await self.resources.store.find("agent", {"_id": agent_id})
                token = await apikeys.token_of(self.resources, "agent", agent_id) if agents else None
                cred = self._credential(agents[0], token) if token else None
                if cred:
                    self.put(cred)
                    return
        except Exception as exc:  # the store may be away: the handshake is refused as before
            log.warning("agent credential miss read failed", error=str(exc)[:200])
            return
        if len(self._absent) > 10_000:
            self._absent.clear()
        self._absent[agent_id] = now

    def _credential(self, agent: dict, token: dict) -> AgentCredential | None:
        try:
            key = apikeys.agent_key(self.server_secret, token)
        except ValueError:
            # sealed under another server secret (or tampered with): this key cannot be checked
            log.warning("agent key does not open with this server secret", agent=agent["_id"])
            return None
        expires: datetime | None = apikeys.expires_at(token)
        return AgentCredential(agent["_id"], agent["type"], key, expires)

    async def load_all(self) -> int:
        store = self.resources.store
        self._marker = await self._read_marker()
        types = {a["_id"]: a["type"] for a in await store.find("agent")}
        fresh: dict = {}
        for token in await store.find(apikeys.TOKEN_KIND, {"parent_type": "agent"}):
            agent_id = token.get("agent_id")
            agent_type = types.get(agent_id)
            if agent_type is not None and token.get("sealed_key"):  # unsealed on first lookup
                fresh[agent_id] = _Sealed(agent_id, agent_type, token["sealed_key"],
                                          token.get("expire"), token.get("expiration_date"))
        self._by_id = fresh
        log.info("agent credentials loaded", agents=len(types), keys=len(fresh))
        return len(fresh)

    async def refresh(self, agent_id: str) -> None:
        """Re-read one agent's credential after this process changed it; tell other processes."""
        store = self.resources.store
        agents = await store.find("agent", {"_id": agent_id})
        token = await apikeys.token_of(self.resources, "agent", agent_id) if agents else None
        cred = self._credential(agents[0], token) if token else None
        if cred:
            self.put(cred)
        else:
            self.remove(agent_id)
        await self.bump_marker()

    async def bump_marker(self) -> None:
        store = self.resources.store
        self._marker = new_id()
        doc = {"_id": MARKER_ID, "agent_credentials": self._marker}
        if await store.find(STATE_COLLECTION, {"_id": MARKER_ID}):
            await store.replace(STATE_COLLECTION, doc)
        else:
            try:
                await store.insert(STATE_COLLECTION, doc)
            except Conflict:  # created meanwhile by another process
                await store.replace(STATE_COLLECTION, doc)

    async def _read_marker(self) -> str | None:
        # `find`, not `get`: the id cache would hide another process's write
        docs = await self.resources.store.find(STATE_COLLECTION, {"_id": MARKER_ID})
        return docs[0].get("agent_credentials") if docs else None

    async def reload_if_changed(self) -> bool:
        """Reload if another process moved the marker since the last load (one indexed read).
        The server calls it once more just before it serves: a key rotated or deleted while the
        daemon was starting, after `load_all` read the marker, is not accepted."""
        if await self._read_marker() == self._marker:
            return False
        await self.load_all()
        return True

    async def watch(self, interval: float = 1.0, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reload when another process moved the marker; one indexed read per interval."""
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.reload_if_changed()
            except Exception as exc:  # the database may be briefly away: keep what we have
                log.warning("agent credentials refresh failed", error=str(exc))
