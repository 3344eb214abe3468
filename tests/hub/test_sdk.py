"""The agent SDK against the real hub: both auth modes, dispatch, errors, reconnect, stop."""

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import yaml

from agent.config import parse_config
from agent.sdk import Agent, Backoff, normalize_endpoint
from kahuna.hub import AgentError, Hub
from tests.hub.conftest import FAST, KAKTUS, KEY, KIWI, wait_until

ROOT = Path(__file__).resolve().parents[2]


def make_agent(url, agent_id=KAKTUS, agent_type="Kaktus", key=KEY, **kw):
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    agent = Agent(agent_type, agent_id, key, url, rng=random.Random(1), **kw)

    @agent.method()
    def Echo(params):
        return params

    @agent.method()
    def Fail(params):
        raise ValueError("Domain not found: no domain with matching name 'vm9'")

    @agent.method()
    async def Slow(params):
        await trio.sleep(params["seconds"])
        return "slow done"
    return agent


@pytest.mark.parametrize("auth", ["hmac", "key"])
async def test_sdk_serves_calls_in_both_auth_modes(hub, auth):
    agent = make_agent(hub.url, auth=auth)
    hub.nursery.start_soon(agent.run)
    await wait_until(lambda: hub.hub.is_connected(KAKTUS))
    status = hub.hub.status(KAKTUS)
    assert status["version"] == "1.0"
    assert status["methods"] == ["Capabilities", "Echo", "Fail", "Slow"]
    assert await hub.hub.call(KAKTUS, "Echo", {"Nested": [1, {"a": None}], "S": "h\u00e9"}) == \
        {"Nested": [1, {"a": None}], "S": "h\u00e9"}
    with pytest.raises(AgentError, match="^Domain not found: no domain with matching name 'vm9'$"):
        await hub.hub.call(KAKTUS, "Fail", {})
    with pytest.raises(AgentError, match=r"^rpc: can't find method Kaktus.Nope$"):
        await hub.hub.call(KAKTUS, "Nope", {})
    with pytest.raises(AgentError, match=r"^rpc: can't find service Kiwi.Echo$"):
        await hub.hub.call(KAKTUS, "Kiwi.Echo", {})
    order = []

    async def call(method, params):
        order.append(await hub.hub.call(KAKTUS, method, params, timeout=5))
    async with trio.open_nursery() as nursery:      # one task per request: Echo overtakes Slow
        nursery.start_soon(call, "Slow", {"seconds": 0.3})
        await trio.sleep(0.05)
        nursery.start_soon(call, "Echo", "fast")
    assert order == ["fast", "slow done"]
    agent.stop()


async def test_sdk_reconnects_after_a_hub_restart(nursery, credentials):
    first = Hub(FAST, credentials)
    async with trio.open_nursery() as hub_nursery:
        _, port = await hub_nursery.start(first.serve, "127.0.0.1", 0)
        agent = make_agent(f"ws://127.0.0.1:{port}/ws")
        nursery.start_soon(agent.run)
        await wait_until(lambda: first.is_connected(KAKTUS))
        await first.shutdown()
    assert agent.last_close == 1001
    await trio.sleep(0.3)                 # a few refused dials while no hub listens
    second = Hub(FAST, credentials)
    await nursery.start(second.serve, "127.0.0.1", port)
    await wait_until(lambda: second.is_connected(KAKTUS), timeout=5)
    assert await second.call(KAKTUS, "Echo", "back") == "back"
    assert agent.sessions == 2
    agent.stop()


async def test_sdk_stop_closes_with_1000_and_run_returns(hub):
    agent = make_agent(hub.url)
    done = trio.Event()

    async def run():
        await agent.run()
        done.set()
    hub.nursery.start_soon(run)
    await wait_until(lambda: hub.hub.is_connected(KAKTUS))
    session = hub.hub.registry.get(KAKTUS)
    agent.stop()
    with trio.fail_after(3):
        await done.wait()
    assert session.peer_close_code == 1000
    await wait_until(lambda: not hub.hub.is_connected(KAKTUS))


async def test_sdk_backs_off_when_refused(hub):
    agent = make_agent(hub.url, key="not-the-key")
    hub.nursery.start_soon(agent.run)
    await wait_until(lambda: agent.backoff.attempt >= 3, timeout=5)
    assert agent.last_error == "refused 403 forbidden"
    assert hub.hub.stats.rejected["bad_signature"] >= 3 and not hub.hub.is_connected(KAKTUS)
    agent.stop()


def test_backoff_is_jittered_exponential_and_capped():
    backoff = Backoff(0.5, 30.0, random.Random(3))
    delays = [backoff.next_delay() for _ in range(10)]
    for k, d in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2 ** k)
        assert ceiling / 2 <= d <= ceiling
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


@pytest.mark.parametrize("endpoint,url", [
    ("ws://127.0.0.1:8081/ws", "ws://127.0.0.1:8081/ws"),
    ("wss://kowabunga.acme.com", "wss://kowabunga.acme.com/ws"),
    ("https://kowabunga.acme.com/", "wss://kowabunga.acme.com/ws"),
    ("http://10.0.0.1:8080", "ws://10.0.0.1:8080/ws"),
    ("kowabunga.acme.com", "wss://kowabunga.acme.com/ws"),
    ("https://acme.com/kahuna", "wss://acme.com/kahuna/ws"),
])
def test_endpoint_forms(endpoint, url):
    assert normalize_endpoint(endpoint) == url


def test_endpoint_scheme_is_checked():
    with pytest.raises(ValueError):
        normalize_endpoint("ftp://x/ws")


def test_upstream_agent_yaml():
    config = parse_config(yaml.safe_load(
        "global:\n  logLevel: DEBUG\n  id: AGENT_ID\n  endpoint: \"wss://kowabunga.acme.com\"\n"
        "  apiKey: API_KEY\ndns:\n  port: 53\n  recursors:\n    - 9.9.9.9\n"))
    assert (config.agent_id, config.api_key, config.endpoint, config.auth) == \
        ("AGENT_ID", "API_KEY", "wss://kowabunga.acme.com/ws", "hmac")
    assert config.sections == {"dns": {"port": 53, "recursors": ["9.9.9.9"]}}
    assert config.ssl_context() is not None
    with pytest.raises(ValueError, match="apiKey"):
        parse_config({"global": {"id": "x", "endpoint": "ws://h/ws"}})


async def test_sim_cli_stops_cleanly_on_sigterm(hub, tmp_path):
    """`python -m agent.sim kiwi -c FILE`: registers, and SIGTERM closes with 1000, exit 0."""
    config = tmp_path / "kiwi.yml"
    config.write_text(yaml.safe_dump({"global": {"id": KIWI, "apiKey": KEY, "endpoint": hub.url,
                                                 "logLevel": "WARNING"}}))
    proc = subprocess.Popen([sys.executable, "-m", "agent.sim", "kiwi", "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await wait_until(lambda: hub.hub.is_connected(KIWI), timeout=15)
        session = hub.hub.registry.get(KIWI)
        assert "CreateDnsRecord" in session.methods and session.version == "1.1"
        proc.send_signal(signal.SIGTERM)
        rc = await trio.to_thread.run_sync(proc.wait, 10)
        assert rc == 0, proc.stdout.read().decode()
        await wait_until(lambda: not hub.hub.is_connected(KIWI))
        assert session.peer_close_code == 1000
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_sim_fleet_runs_many_agents_in_one_process(hub, credentials, tmp_path):
    from kahuna.hub import AgentCredential
    lines = []
    for i in range(24):
        agent_id, agent_type = f"{i:024x}", ("Kaktus", "Kiwi", "Kontroller")[i % 3]
        credentials.put(AgentCredential(agent_id, agent_type, f"key-{i}"))
        lines.append(f"{agent_id} key-{i} {agent_type}" if i % 3 else f"{agent_id} key-{i}")
    keys = tmp_path / "agents.txt"
    keys.write_text("# id key [type]\n" + "\n".join(lines) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "agent.sim", "fleet", "-k", str(keys), "-e", hub.url,
                             "-C", "8", "--auth", "key", "--report", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await wait_until(lambda: len(hub.hub.connected_ids()) == 24, timeout=20)
        assert hub.hub.status(f"{1:024x}")["version"] == "1.1"          # a Kiwi
        assert await hub.hub.call(f"{3:024x}", "Echo", {"n": 3}) == {"n": 3}
        sessions = [hub.hub.registry.get(i) for i in hub.hub.connected_ids()]
        proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(proc.wait, 10) == 0
        await wait_until(lambda: not hub.hub.connected_ids())
        assert {s.peer_close_code for s in sessions} == {1000}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
