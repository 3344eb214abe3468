"""Both auth modes over real sockets: the answer comes before the upgrade, with the right status."""

import time
from datetime import datetime, timedelta, timezone

import pytest
import trio

from agent.sdk import hmac_headers, key_headers
from kahuna.hub import AgentCredential
from tests.hub.conftest import KAKTUS, KEY, KIWI, wait_until
from tests.hub.rawagent import RawAgent, Rejected


async def expect_refusal(hub, headers, status, path="/ws"):
    with pytest.raises(Rejected) as info:
        await RawAgent.connect(hub.nursery, hub.port, headers, path=path)
    assert info.value.status == status
    return info.value.body


@pytest.mark.parametrize("mode", ["hmac", "key"])
async def test_good_credentials_register_after_capabilities(hub, mode):
    agent = await hub.raw(mode=mode)
    request = await agent.request()
    assert request == {"id": request["id"], "method": "Kaktus.Capabilities", "params": {}}
    assert not hub.hub.is_connected(KAKTUS)        # not before the Capabilities reply
    await agent.reply(request, {"Version": "1.0", "Methods": ["Capabilities", "Echo"]})
    await wait_until(lambda: hub.hub.is_connected(KAKTUS))
    status = hub.hub.status(KAKTUS)
    assert status["connected"] and status["version"] == "1.0"
    assert status["methods"] == ["Capabilities", "Echo"]
    assert status["remote_address"].startswith("127.0.0.1:")
    assert status["connected_since"] <= status["last_seen"]


@pytest.mark.parametrize("mode", ["hmac", "key"])
async def test_refusals(hub, credentials, mode):
    credentials.put(AgentCredential("expired", "Kaktus", KEY, datetime.now(timezone.utc) - timedelta(seconds=1)))
    cases = [
        (hub.headers(key="wrong", mode=mode), "bad_signature" if mode == "hmac" else "bad_key"),
        (hub.headers(agent_type="Kiwi", mode=mode), "type_mismatch"),        # upstream forgets this
        (hub.headers(KIWI, "Kaktus", mode=mode), "type_mismatch"),
        (hub.headers("expired", mode=mode), "expired_key"),
        (hub.headers("unknown0123456789abcdef", mode=mode), "unknown_agent"),
        (hub.headers(agent_type="Kpop", mode=mode), "unknown_type"),
    ]
    for headers, reason in cases:
        body = await expect_refusal(hub, headers, 403)
        assert body == b"forbidden\n"
    rejected = hub.hub.stats_snapshot()["rejected"]
    assert sum(rejected.values()) == len(cases)
    assert {reason for _, reason in cases} == set(rejected)
    assert hub.hub.connected_ids() == []


async def test_replayed_nonce_and_skewed_clock(hub):
    headers = hub.headers()
    agent = await hub.registered(agent=await hub.raw(headers=headers))
    await agent.aclose()
    assert await expect_refusal(hub, headers, 403) == b"forbidden\n"
    await expect_refusal(hub, hub.headers(now=time.time() - 310), 403)
    await expect_refusal(hub, hub.headers(now=time.time() + 310), 403)
    assert hub.hub.stats_snapshot()["rejected"] == {"replayed_nonce": 1, "clock_skew": 2}


@pytest.mark.parametrize("missing", [b"X-WS-Kowabunga-Agent", b"X-WS-Kowabunga-Id", b"X-WS-Kowabunga-Api-Key"])
async def test_missing_header_is_400(hub, missing):
    headers = [(k, v) for k, v in key_headers("Kaktus", KAKTUS, KEY) if k != missing]
    body = await expect_refusal(hub, headers, 400)
    assert body.startswith(b"bad request: missing header")


async def test_key_and_signature_together_is_400(hub):
    headers = hmac_headers("Kaktus", KAKTUS, KEY) + [(b"X-WS-Kowabunga-Api-Key", KEY.encode())]
    await expect_refusal(hub, headers, 400)
    assert hub.hub.stats_snapshot()["rejected"] == {"both_auth_modes": 1}


async def test_other_paths_are_404_before_upgrade(hub):
    await expect_refusal(hub, hub.headers(), 404, path="/agent")
    await expect_refusal(hub, hub.headers(), 404, path="/ws/extra")


async def test_handshake_flood_does_not_stop_service(hub):
    """Garbage, half-open and refused handshakes by the hundred; a real agent still gets in."""
    async def garbage(i):
        stream = await trio.open_tcp_stream("127.0.0.1", hub.port)
        with trio.move_on_after(3):
            if i % 3 == 0:
                await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")   # no upgrade
            elif i % 3 == 1:
                await stream.send_all(b"\x16\x03\x01\x02\x00garbage" * 10)       # a TLS hello
            else:
                await stream.send_all(b"GET /ws HTTP/1.1\r\n")                   # never finishes
            await stream.receive_some(1024)
        await stream.aclose()

    async def refused(i):
        with pytest.raises(Rejected):
            await hub.raw(key=f"wrong{i}")

    async with trio.open_nursery() as n:
        for i in range(60):
            n.start_soon(garbage, i)
            n.start_soon(refused, i)
        agent = await hub.registered()
        n.start_soon(agent.echo_forever)
        assert await hub.hub.call(KAKTUS, "Echo", {"ok": 1}, timeout=2) == {"ok": 1}
        n.cancel_scope.cancel()


async def test_remote_address_from_a_trusted_proxy_only(start_hub):
    from kahuna.hub import HubSettings
    trusting = await start_hub(HubSettings(trusted_proxies=frozenset({"127.0.0.1"})))
    forwarded = [(b"X-Forwarded-For", b"198.51.100.4, 203.0.113.9")]
    await trusting.registered(headers=trusting.headers() + forwarded)
    assert trusting.hub.status(KAKTUS)["remote_address"] == "203.0.113.9"
    plain = await start_hub()
    await plain.registered(headers=plain.headers() + forwarded)
    assert plain.hub.status(KAKTUS)["remote_address"].startswith("127.0.0.1:")
