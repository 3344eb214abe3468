"""The hub's guarantees under its lean structure (one reader per session, synchronous sends,
one timer for every deadline, one loop per fan-out), over real sockets: deadlines and
cancellation leave nothing behind, a stalled agent's send buffer stays bounded, fan-outs report
per agent, pings and the agent's own control frames are answered."""

import pytest
import trio
from wsproto.events import Ping, Pong

from kahuna.hub import (AgentDisconnected, AgentError, AgentNotConnected, AgentUnavailable,
                        CallTimeout, HubSettings)
from tests.hub.conftest import KAKTUS, KIWI, KONTROLLER, wait_until


async def test_call_deadline_fires_from_the_hub_timer_and_leaves_nothing_armed(hub):
    agent = await hub.registered()
    session = hub.hub.registry.get(KAKTUS)
    with pytest.raises(CallTimeout):
        await hub.hub.call(KAKTUS, "Echo", {"slow": 1}, timeout=0.1)
    request = await agent.request()                       # the agent answers late
    await agent.reply(request, "late")
    await wait_until(lambda: hub.hub.stats.stale_replies == 1)
    assert len(session.pending) == 0
    assert ("Kaktus.Echo", "timeout") in hub.hub.stats.calls_by


async def test_caller_cancellation_withdraws_the_call(hub):
    agent = await hub.registered()
    session = hub.hub.registry.get(KAKTUS)
    with trio.move_on_after(0.1):
        await hub.hub.call(KAKTUS, "Echo", {"n": 1}, timeout=30)
    assert len(session.pending) == 0 and len(hub.hub.deadlines) <= 1    # at most the pong wait
    request = await agent.request()
    await agent.reply(request, "nobody waits")
    await wait_until(lambda: hub.hub.stats.stale_replies == 1)
    hub.nursery.start_soon(agent.echo_forever)
    assert await hub.hub.call(KAKTUS, "Echo", {"n": 2}, timeout=2) == {"n": 2}


async def test_a_stalled_agent_gets_a_bounded_send_buffer_then_loses_its_session(start_hub):
    limit = 256 * 1024
    handle = await start_hub(HubSettings(send_buffer_limit=limit, max_message_size=128 * 1024,
                                         capabilities_timeout=2.0, close_timeout=0.5))
    stalled = await handle.registered()
    healthy = await handle.registered(KIWI, agent_type="Kiwi")
    handle.nursery.start_soon(healthy.echo_forever)
    stalled.pause_reading()
    session = handle.hub.registry.get(KAKTUS)
    failures, peak = [], [0]

    async def call(n):
        try:
            await handle.hub.call(KAKTUS, "Echo", "x" * 100_000, timeout=10)
        except AgentUnavailable as exc:           # disconnected, or already not connected
            failures.append(exc)
        peak[0] = max(peak[0], session.send_buffered)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(400):                       # ~40 MB: far more than the socket holds
                nursery.start_soon(call, n)
    assert len(failures) == 400                         # every call ended, none hangs
    assert any(isinstance(f, AgentDisconnected) for f in failures)
    assert peak[0] <= limit + 100_100
    assert handle.hub.stats.backpressure_events >= 1 and handle.hub.stats.send_buffer_overflows == 1
    await wait_until(lambda: not handle.hub.is_connected(KAKTUS))
    assert await handle.hub.call(KIWI, "Echo", "still served", timeout=2) == "still served"


async def test_call_many_answers_per_agent(hub, credentials):
    answering = await hub.registered()
    hub.nursery.start_soon(answering.echo_forever)
    silent = await hub.registered(KONTROLLER, agent_type="Kontroller")
    refusing = await hub.registered(KIWI, agent_type="Kiwi")

    async def refuse():
        request = await refusing.request()
        await refusing.reply(request, None, "rpc: can't find method Kiwi.Echo")
    hub.nursery.start_soon(refuse)
    results = await hub.hub.call_many([KAKTUS, KIWI, KONTROLLER, "nobody"], "Echo", {"n": 7},
                                      timeout=0.5)
    assert results[KAKTUS] == {"n": 7}
    assert isinstance(results[KIWI], AgentError) and str(results[KIWI]).startswith("rpc: can't find")
    assert isinstance(results[KONTROLLER], CallTimeout)
    assert isinstance(results["nobody"], AgentNotConnected)
    request = await silent.request()            # its late reply is stale, never delivered
    assert request["method"] == "Kontroller.Echo"
    await silent.reply(request, "late")
    await wait_until(lambda: hub.hub.stats.stale_replies == 1)
    for session in (hub.hub.registry.get(i) for i in (KAKTUS, KIWI, KONTROLLER)):
        assert len(session.pending) == 0


async def test_call_many_fails_the_members_of_a_session_that_ends(hub):
    agent = await hub.registered()
    async with trio.open_nursery() as nursery:
        async def drop():
            await agent.request()
            await agent.aclose(1000)
        nursery.start_soon(drop)
        results = await hub.hub.call_many([KAKTUS], "Echo", {}, timeout=5)
    assert isinstance(results[KAKTUS], AgentDisconnected)


async def test_agent_ping_is_answered_and_unsolicited_pong_ignored(hub):
    agent = await hub.registered()
    hub.nursery.start_soon(agent.echo_forever)
    await agent._send(Pong(payload=b"unasked"))
    await agent._send(Ping(payload=b"are you there"))
    assert await hub.hub.call(KAKTUS, "Echo", "after ping", timeout=2) == "after ping"
    assert hub.hub.is_connected(KAKTUS)


async def test_pong_deadlines_leave_the_timer_with_their_session(start_hub):
    handle = await start_hub(HubSettings(ping_interval=0.05, pong_timeout=5.0, close_timeout=0.5))
    agent = await handle.registered()
    await wait_until(lambda: agent.pings >= 3)          # pings keep coming: pongs were matched
    await agent.aclose()
    await wait_until(lambda: not handle.hub._live)
    assert len(handle.hub.deadlines) == 0
    assert handle.hub.stats.heartbeat_timeouts == 0


async def test_counters_follow_sessions_and_calls(hub):
    agent = await hub.registered()
    hub.nursery.start_soon(agent.echo_forever)
    stats = hub.hub.stats
    assert stats.sessions_by_type["Kaktus"] == 1 and stats.handshakes["accepted"] == 1
    await hub.hub.call(KAKTUS, "Echo", 1, timeout=2)
    assert stats.calls_by[("Kaktus.Echo", "ok")] == 1
    assert sum(stats.call_latency_counts) == stats.calls == 2          # Capabilities included
    assert stats.frames_out >= 2 and stats.frames_in >= 2
    await agent.aclose()
    await wait_until(lambda: stats.sessions_by_type["Kaktus"] == 0)
    snapshot = hub.hub.stats_snapshot()
    assert snapshot["calls_by"]["Kaktus.Echo ok"] == 1 and snapshot["handshakes"] == {"accepted": 1}


async def test_raw_upgrade_refusals_are_http_answers(hub):
    async def answer(request: bytes) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", hub.port)
        async with stream:
            await stream.send_all(request)
            data = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(4096):
                    data += chunk
        return data
    assert (await answer(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    wrong_version = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    refused = await answer(wrong_version)
    assert refused.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in refused
    assert hub.hub.stats.handshakes["not_an_upgrade"] == 1

