"""Sessions over real sockets: Capabilities, concurrent calls, deadlines, replacement, heartbeat,
disconnect, hostile frames, hooks, agent selection, shutdown."""

import json
import random
from collections import Counter

import pytest
import trio

from kahuna.hub import (AgentCredential, AgentDisconnected, AgentError, AgentNotConnected,
                        CallTimeout, HubSettings, MalformedReply, NoEligibleAgent)
from tests.hub.conftest import FAST, KAKTUS, KEY, KIWI, KONTROLLER, wait_until
from tests.hub.rawagent import Rejected


async def tagged_echo(agent, tag):
    """Answer every request with [tag, params] until the session ends."""
    try:
        while True:
            request = await agent.request(timeout=float("inf"))
            await agent.reply(request, [tag, request["params"]])
    except (trio.EndOfChannel, trio.ClosedResourceError):
        pass


# ----------------------------------------------------------------------------- Capabilities

@pytest.mark.parametrize("reply", [
    {"error": "rpc: can't find method Kaktus.Capabilities"},
    {"result": {"Version": 1, "Methods": []}},
    {"result": {"Version": "1.0", "Methods": "Echo"}},
    {"result": ["Echo"]},
])
async def test_failed_capabilities_close_the_session(hub, reply):
    agent = await hub.raw()
    request = await agent.request()
    await agent.reply(request, reply.get("result"), reply.get("error"))
    assert await agent.wait_closed() == 1008
    assert not hub.hub.is_connected(KAKTUS)
    assert hub.hub.stats_snapshot()["rejected"] == {"capabilities_failed": 1}


async def test_capabilities_timeout_closes_the_session(start_hub):
    handle = await start_hub(HubSettings(capabilities_timeout=0.3, close_timeout=0.5))
    agent = await handle.raw()
    await agent.request()                       # and never answer
    start = trio.current_time()
    assert await agent.wait_closed() == 1008
    assert 0.2 <= trio.current_time() - start < 1.5
    assert handle.hub.status(KAKTUS) is None


# ----------------------------------------------------------------------------- calls

async def test_many_concurrent_calls_with_out_of_order_replies(hub):
    agent = await hub.registered()
    results = {}

    async def call(n):
        results[n] = await hub.hub.call(KAKTUS, "Echo", {"n": n}, timeout=5)

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(call, n)
        requests = [await agent.request() for _ in range(50)]
        assert len({r["id"] for r in requests}) == 50
        assert all(r["method"] == "Kaktus.Echo" for r in requests)
        random.Random(7).shuffle(requests)
        for r in requests:
            await agent.reply(r, {"double": r["params"]["n"] * 2})
    assert results == {n: {"double": 2 * n} for n in range(50)}


async def test_late_reply_is_dropped_and_never_reaches_the_next_call(hub):
    agent = await hub.registered()
    start = trio.current_time()
    with pytest.raises(CallTimeout):
        await hub.hub.call(KAKTUS, "Echo", {"call": "A"}, timeout=0.2)
    assert 0.15 <= trio.current_time() - start < 1.0
    first = await agent.request()          # A's request, still unanswered by the agent
    results = []

    async def call_b():
        results.append(await hub.hub.call(KAKTUS, "Echo", {"call": "B"}, timeout=5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call_b)
        second = await agent.request()
        assert second["params"] == {"call": "B"} and second["id"] != first["id"]
        await agent.reply(first, "answer for A")       # late: must not be taken for B's
        await trio.sleep(0.05)
        assert results == []
        await agent.reply(second, "answer for B")
    assert results == ["answer for B"]
    assert hub.hub.stats_snapshot()["stale_replies"] == 1


async def test_agent_error_string_is_raised_unchanged(hub):
    agent = await hub.registered()
    async with trio.open_nursery() as nursery:
        async def answer():
            request = await agent.request()
            await agent.reply(request, {"ignored": True}, "Domain not found: no domain with matching name 'vm1'")
        nursery.start_soon(answer)
        with pytest.raises(AgentError) as info:
            await hub.hub.call(KAKTUS, "GetInstanceState", {"Name": "vm1"}, timeout=5)
    assert str(info.value) == "Domain not found: no domain with matching name 'vm1'"
    assert info.value.method == "Kaktus.GetInstanceState"


async def test_session_end_fails_every_pending_call_at_once(hub):
    agent = await hub.registered()
    outcomes = []

    async def call(n):
        try:
            await hub.hub.call(KAKTUS, "Echo", {"n": n}, timeout=30)
        except AgentDisconnected as exc:
            outcomes.append((trio.current_time(), exc))

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(call, n)
        for _ in range(10):
            await agent.request()
        closed_at = trio.current_time()
        await agent.aclose(1000)
    assert len(outcomes) == 10
    assert max(t for t, _ in outcomes) - closed_at < 0.5
    assert "disconnected" in str(outcomes[0][1]) or "closed" in str(outcomes[0][1])
    with pytest.raises(AgentNotConnected):
        await hub.hub.call(KAKTUS, "Echo", {}, timeout=1)


async def test_unknown_agent_and_method_prefix(hub):
    with pytest.raises(AgentNotConnected):
        await hub.hub.call("nobody", "Echo")
    agent = await hub.registered()
    hub.nursery.start_soon(agent.echo_forever)
    assert await hub.hub.call(KAKTUS, "Kaktus.Echo", {"a": 1}) == {"a": 1}
    assert await hub.hub.call(KAKTUS, "Echo", None) == {}


# ----------------------------------------------------------------------------- replacement

async def test_new_session_replaces_old_one_without_a_gap(hub):
    old = await hub.registered()
    old_session = hub.hub.registry.get(KAKTUS)
    stuck = []

    async def stuck_call():
        try:
            await hub.hub.call(KAKTUS, "Echo", "stuck", timeout=5)
        except AgentDisconnected as exc:
            stuck.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_call)
        assert (await old.request())["params"] == "stuck"      # in flight on the old session
        new = await hub.raw()
        await new.answer_capabilities(("Capabilities", "Echo"))
        await wait_until(lambda: hub.hub.registry.get(KAKTUS) is not old_session)
        # from the moment of the swap every call goes to the new session
        hub.nursery.start_soon(tagged_echo, new, "new")
        for i in range(20):
            assert await hub.hub.call(KAKTUS, "Echo", i, timeout=2) == ["new", i]
        assert await old.wait_closed() == 4000
    assert len(stuck) == 1 and "replaced" in str(stuck[0])
    await trio.sleep(0.1)      # the old session's teardown has run: it must not evict the new one
    assert hub.hub.is_connected(KAKTUS) and hub.hub.registry.get(KAKTUS) is not old_session
    assert await hub.hub.call(KAKTUS, "Echo", "after", timeout=2) == ["new", "after"]
    stats = hub.hub.stats_snapshot()
    assert stats["replaced"] == 1 and stats["registered"] == 1


# ----------------------------------------------------------------------------- heartbeat

async def test_agent_that_stops_answering_pings_is_dropped(start_hub):
    handle = await start_hub(HubSettings(ping_interval=0.2, pong_timeout=0.3, close_timeout=0.5))
    silent = await handle.registered(KAKTUS)
    healthy = await handle.registered(KIWI, agent_type="Kiwi")
    silent.auto_pong = False
    stopped_at = trio.current_time()
    await silent.wait_closed(timeout=3)
    assert trio.current_time() - stopped_at <= 0.2 + 0.3 + 0.3
    await wait_until(lambda: not handle.hub.is_connected(KAKTUS))
    await trio.sleep(0.6)
    assert handle.hub.is_connected(KIWI) and healthy.pings >= 3 and not healthy.closed.is_set()
    assert handle.hub.stats_snapshot()["heartbeat_timeouts"] == 1


async def test_heartbeat_with_default_settings_in_virtual_time(nursery, credentials, autojump_clock):
    """Defaults (ping 9 s, pong 10 s): a silent agent is gone within 20 s, a healthy one stays."""
    from kahuna.hub import Hub
    from tests.hub.conftest import HubHandle
    hub = Hub(HubSettings(), credentials)
    _, port = await nursery.start(hub.serve, "127.0.0.1", 0)
    handle = HubHandle(hub, port, nursery)
    healthy = await handle.registered(KIWI, agent_type="Kiwi")
    silent = await handle.registered(KAKTUS)
    silent.auto_pong = False
    stopped_at = trio.current_time()
    await silent.wait_closed(timeout=60)
    assert 9.0 <= trio.current_time() - stopped_at <= 20.0
    await trio.sleep(60)
    assert hub.is_connected(KIWI) and healthy.pings >= 6
    assert hub.stats_snapshot()["heartbeat_timeouts"] == 1


# ----------------------------------------------------------------------------- disconnect, rotation

async def test_disconnect_on_key_rotation(hub, credentials):
    agent = await hub.registered()
    credentials.put(AgentCredential(KAKTUS, "Kaktus", "n3wKey" * 10))
    assert await hub.hub.disconnect(KAKTUS) is True
    assert not hub.hub.is_connected(KAKTUS)
    assert await agent.wait_closed() == 4000
    with pytest.raises(Rejected) as info:
        await hub.raw(key=KEY)
    assert info.value.status == 403
    await hub.registered(key="n3wKey" * 10)
    assert await hub.hub.disconnect("nobody") is False
    status = hub.hub.status(KAKTUS)
    assert status["connected"] is True


async def test_credential_changed_while_capabilities_pending(hub, credentials):
    agent = await hub.raw()
    request = await agent.request()
    credentials.put(AgentCredential(KAKTUS, "Kaktus", "r0tated" * 9))
    await agent.reply(request, {"Version": "1.0", "Methods": ["Echo"]})
    assert await agent.wait_closed() == 4001
    assert not hub.hub.is_connected(KAKTUS)
    assert hub.hub.stats_snapshot()["rejected"] == {"credential_changed": 1}


async def test_status_remembers_the_last_session(hub):
    assert hub.hub.status(KAKTUS) is None
    agent = await hub.registered()
    await agent.aclose()
    await wait_until(lambda: not hub.hub.is_connected(KAKTUS))
    status = hub.hub.status(KAKTUS)
    assert status["connected"] is False and status["methods"] == ["Capabilities", "Echo"]
    assert status["disconnected_at"] >= status["last_seen"]
    hub.hub.forget(KAKTUS)
    assert hub.hub.status(KAKTUS) is None


# ----------------------------------------------------------------------------- hostile input

async def test_malformed_frames_neither_kill_the_session_nor_the_hub(hub):
    agent = await hub.registered()
    for frame in (b"{not json", b"[1, 2]", b'{"id": "7", "result": 1}', b'{"id": -1}',
                  b'{"id": 1, "method": "Kahuna.Hello", "params": {}}', b"\xff" * 10):
        await agent.send_bytes(frame)
    await agent.send_text('{"id": 0, "result": "as text", "error": null}')
    await agent.send_bytes(b'{"id": 987654321, "result": null, "error": null}')
    hub.nursery.start_soon(agent.echo_forever)
    assert await hub.hub.call(KAKTUS, "Echo", {"still": "alive"}, timeout=2) == {"still": "alive"}
    stats = hub.hub.stats_snapshot()
    assert (stats["malformed_frames"], stats["text_frames"], stats["unknown_replies"]) == (6, 1, 1)


async def test_reply_with_a_non_string_error_fails_its_call_at_once(hub):
    agent = await hub.registered()
    async with trio.open_nursery() as nursery:
        async def answer():
            request = await agent.request()
            await agent.send_bytes(json.dumps({"id": request["id"], "result": None, "error": 42}).encode())
        nursery.start_soon(answer)
        start = trio.current_time()
        with pytest.raises(MalformedReply):
            await hub.hub.call(KAKTUS, "Echo", {}, timeout=5)
        assert trio.current_time() - start < 1


async def test_oversized_frame_closes_with_1009_and_the_hub_serves_on(start_hub):
    handle = await start_hub(HubSettings(max_message_size=64 * 1024, close_timeout=0.5))
    big = await handle.registered()
    other = await handle.registered(KIWI, agent_type="Kiwi")
    await big.send_bytes(b"[" + b"1," * 50_000 + b"1]")
    assert await big.wait_closed() == 1009
    await wait_until(lambda: not handle.hub.is_connected(KAKTUS))
    handle.nursery.start_soon(other.echo_forever)
    assert await handle.hub.call(KIWI, "Echo", "x" * 60_000, timeout=2) == "x" * 60_000


# ----------------------------------------------------------------------------- hooks

async def test_connect_hooks_run_in_the_session_and_failures_are_contained(hub):
    seen = []

    async def reload_kaktus(agent_id):
        seen.append(("kaktus", agent_id, await hub.hub.call(agent_id, "Echo", {"hook": 1}, timeout=2)))

    async def broken(agent_id):
        raise RuntimeError("hook bug")

    async def kiwi_only(agent_id):
        seen.append(("kiwi", agent_id))

    hub.hub.on_connect("Kaktus", reload_kaktus)
    remove = hub.hub.on_connect("Kaktus", broken)
    hub.hub.on_connect("Kiwi", kiwi_only)
    with pytest.raises(ValueError):
        hub.hub.on_connect("Kpop", kiwi_only)
    agent = await hub.registered()
    hub.nursery.start_soon(agent.echo_forever)
    await wait_until(lambda: seen)
    assert seen == [("kaktus", KAKTUS, {"hook": 1})]
    await wait_until(lambda: hub.hub.stats.hook_failures == 1)
    assert hub.hub.is_connected(KAKTUS)
    assert await hub.hub.call(KAKTUS, "Echo", 2, timeout=2) == 2
    remove()
    assert broken not in hub.hub._port.hooks("Kaktus")


# ----------------------------------------------------------------------------- selection, shutdown

async def test_pick_agent_only_among_connected_agents_advertising_the_method(hub, credentials):
    other = "fedcba9876543210fedcba98"
    credentials.put(AgentCredential(other, "Kaktus", KEY))
    await hub.registered(KAKTUS, methods=("Capabilities", "NodeCapabilities", "Echo"))
    await hub.registered(other, methods=("Capabilities", "Echo"))
    await hub.registered(KIWI, agent_type="Kiwi", methods=("Capabilities", "Reload", "Echo"))
    candidates = [KAKTUS, other, KIWI, "offline0000000000000000"]
    assert {hub.hub.pick_agent(candidates, "NodeCapabilities") for _ in range(50)} == {KAKTUS}
    picks = Counter(hub.hub.pick_agent([KAKTUS, other, KAKTUS], "Kaktus.Echo") for _ in range(400))
    assert set(picks) == {KAKTUS, other} and min(picks.values()) > 120     # uniform, duplicates once
    assert hub.hub.pick_agent(candidates, "Kiwi.Reload") == KIWI
    for method in ("Kaktus.Reload", "CreateDnsZone"):
        with pytest.raises(NoEligibleAgent, match="can't find any eligible agent"):
            hub.hub.pick_agent(candidates, method)
    with pytest.raises(NoEligibleAgent):
        hub.hub.pick_agent([], "Echo")
    assert sorted(hub.hub.connected_ids()) == sorted([KAKTUS, other, KIWI])


async def test_shutdown_closes_sessions_with_1001_and_fails_pending_calls(nursery, credentials):
    from kahuna.hub import Hub
    from tests.hub.conftest import HubHandle
    hub = Hub(FAST, credentials)
    serving = trio.Event()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        await hub.serve("127.0.0.1", 0, task_status=task_status)
        serving.set()
    _, port = await nursery.start(serve)
    handle = HubHandle(hub, port, nursery)
    agents = [await handle.registered(KAKTUS), await handle.registered(KONTROLLER, agent_type="Kontroller")]
    failures = []

    async def pending():
        try:
            await hub.call(KAKTUS, "Echo", {}, timeout=10)
        except AgentDisconnected as exc:
            failures.append(exc)
    nursery.start_soon(pending)
    await agents[0].request()
    await hub.shutdown()
    assert serving.is_set()
    assert [await a.wait_closed() for a in agents] == [1001, 1001]
    assert len(failures) == 1 and hub.connected_ids() == []


async def test_disconnect_during_capabilities_prevents_registration(hub):
    registered = await hub.registered()          # a live session that must survive
    hub.nursery.start_soon(tagged_echo, registered, "first")
    late = await hub.raw()
    request = await late.request()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.hub.disconnect, KAKTUS)   # closes both, the live one too
        await trio.sleep(0.05)
        await late.reply(request, {"Version": "1.0", "Methods": ["Echo"]})
    assert await late.wait_closed() == 4000 and await registered.wait_closed() == 4000
    await trio.sleep(0.05)
    assert not hub.hub.is_connected(KAKTUS)
    assert hub.hub.stats_snapshot()["registrations"] == 1


async def test_a_closing_session_is_never_registered(hub):
    """The narrow race behind the test above: Capabilities answered, then a close is requested
    before the session registers; registering it would even replace a good session."""
    await hub.raw()
    await wait_until(lambda: hub.hub._live)
    session = next(iter(hub.hub._live))
    session.version, session.methods = "1.0", frozenset({"Echo"})
    session.close(4000, "disconnected by server")
    assert hub.hub._port.ready(session) is False
    assert not hub.hub.is_connected(KAKTUS)


def test_gc_thresholds_are_raised_never_lowered():
    import gc
    from kahuna.hub.hub import _raise_gc_thresholds
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        _raise_gc_thresholds(100_000, 50)
        assert gc.get_threshold() == (100_000, 50, 10)
        _raise_gc_thresholds(1_000, 5)
        assert gc.get_threshold() == (100_000, 50, 10)
        _raise_gc_thresholds(None, None)
        assert gc.get_threshold() == (100_000, 50, 10)
    finally:
        gc.set_threshold(*saved)


@pytest.mark.parametrize("how", ["close_frame", "eof"])
async def test_an_agent_leaving_during_capabilities_ends_its_session_at_once(start_hub, how):
    """Capabilities runs in the connection's own task: the agent's close (or its EOF) must end
    the session then, not at the Capabilities deadline."""
    handle = await start_hub(HubSettings(capabilities_timeout=30.0, close_timeout=0.5))
    agent = await handle.raw()
    await agent.request()                       # Capabilities, never answered
    await wait_until(lambda: handle.hub._live)
    session = next(iter(handle.hub._live))
    if how == "close_frame":
        await agent.aclose(1000)
    else:
        await trio.aclose_forcefully(agent.stream)
    with trio.fail_after(3):                    # far below capabilities_timeout
        await session.wait_ended()
    assert not handle.hub._live and not handle.hub.is_connected(KAKTUS)
    assert handle.hub.stats_snapshot()["registrations"] == 0


async def test_an_agent_leaving_during_its_connect_hook_cancels_the_hook(hub):
    started, cancelled = trio.Event(), trio.Event()

    async def slow_hook(agent_id):
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise

    hub.hub.on_connect("Kaktus", slow_hook)
    agent = await hub.registered()
    with trio.fail_after(3):
        await started.wait()
    await agent.aclose(1000)
    with trio.fail_after(3):
        await cancelled.wait()
    await wait_until(lambda: not hub.hub.is_connected(KAKTUS))
    assert hub.hub.status(KAKTUS)["connected"] is False
