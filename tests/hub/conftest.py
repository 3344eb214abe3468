"""Hub fixtures: a hub on 127.0.0.1 port 0 in the test's nursery, credentials, header helpers."""

from __future__ import annotations

import pytest
import trio

from agent.sdk import hmac_headers, key_headers
from kahuna.hub import AgentCredential, Hub, HubSettings, InMemoryCredentials
from tests.hub.rawagent import RawAgent

KEY = "s3cretKey0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS"
KAKTUS, KIWI, KONTROLLER = "0123456789abcdef01234567", "89abcdef0123456789abcdef", "aaaaaaaaaaaaaaaaaaaaaaaa"

# Fast heartbeats are opted into per test; these keep unrelated tests quick and quiet.
FAST = HubSettings(capabilities_timeout=2.0, handshake_timeout=2.0, close_timeout=1.0)


class HubHandle:
    def __init__(self, hub: Hub, port: int, nursery: trio.Nursery) -> None:
        self.hub = hub
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.nursery = nursery

    def headers(self, agent_id: str = KAKTUS, agent_type: str = "Kaktus", key: str = KEY, *,
                mode: str = "hmac", **kw) -> list[tuple[bytes, bytes]]:
        if mode == "key":
            return key_headers(agent_type, agent_id, key)
        return hmac_headers(agent_type, agent_id, key, **kw)

    async def raw(self, agent_id: str = KAKTUS, agent_type: str = "Kaktus", *,
                  headers: list[tuple[bytes, bytes]] | None = None, **kw) -> RawAgent:
        return await RawAgent.connect(self.nursery, self.port,
                                      headers if headers is not None else self.headers(agent_id, agent_type, **kw))

    async def registered(self, agent_id: str = KAKTUS, agent: RawAgent | None = None,
                         methods: tuple[str, ...] = ("Capabilities", "Echo"), **kw) -> RawAgent:
        """A raw agent that answered Capabilities, once the hub has registered it."""
        agent = agent or await self.raw(agent_id, **kw)
        await agent.answer_capabilities(methods)
        await wait_until(lambda: self.hub.is_connected(agent_id))
        return agent


async def wait_until(predicate, timeout: float = 5.0, step: float = 0.005) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


@pytest.fixture
def credentials() -> InMemoryCredentials:
    return InMemoryCredentials([AgentCredential(KAKTUS, "Kaktus", KEY),
                                AgentCredential(KIWI, "Kiwi", KEY),
                                AgentCredential(KONTROLLER, "Kontroller", KEY)])


@pytest.fixture
def start_hub(nursery, credentials):
    """`await start_hub(settings)` -> HubHandle; the hub lives until the test ends."""
    async def start(settings: HubSettings = FAST, creds=None) -> HubHandle:
        hub = Hub(settings, creds if creds is not None else credentials)
        host, port = await nursery.start(hub.serve, "127.0.0.1", 0)
        assert host == "127.0.0.1" and port > 0
        return HubHandle(hub, port, nursery)
    return start


@pytest.fixture
async def hub(start_hub) -> HubHandle:
    return await start_hub()
