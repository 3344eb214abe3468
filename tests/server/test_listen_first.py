"""The daemon binds its ports first and loads afterwards (kahuna/listeners.py, issue 13).

What a user sees: an agent (or an HTTP client) dialing a Kahuna that is still starting is queued
by the kernel, not refused, and is served once the daemon is ready -- never before; a port
already in use still stops the daemon with one clear line and exit code 1; keys held lazily
(unsealed on first lookup) behave as the keys unsealed at load did.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from functools import partial

import pytest
import trio

from kahuna import cli
from kahuna.config import load
from kahuna.listeners import bind
from kahuna.orchestrator.agent_credentials import StoredAgentCredentials
from kahuna.orchestrator.agent_keys import AgentKeys
from kahuna.resources import agents as agent_kinds
from kahuna.resources.service import Resources
from kahuna.server import prepared_store, run
from tests.kahuna_proc import ROOT, write_config


def upgrade(agent_id: str, key: str) -> bytes:
    return ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"X-WS-Kowabunga-Agent: Kaktus\r\nX-WS-Kowabunga-Id: {agent_id}\r\n"
            f"X-WS-Kowabunga-Api-Key: {key}\r\n\r\n").encode()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def status_line(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


async def make_agents(config, secrets, count: int = 1) -> list[tuple[str, str]]:
    """Agents and keys written to the store as `kahuna.py agent create` writes them."""
    out = []
    async with prepared_store(config) as store:
        resources = Resources(store, config=config, secrets=secrets)
        keys = AgentKeys(resources, StoredAgentCredentials(resources, secrets.server_secret))
        for i in range(count):
            agent = await resources.create("agent", {"name": f"early-{i}", "type": "Kaktus"})
            _, key = await keys.issue(agent["_id"], announce=False)
            out.append((agent["_id"], key))
        await keys.credentials.bump_marker()
    return out


@pytest.fixture
def daemon_config(tmp_path):
    config, _ = load(write_config(tmp_path / "kahuna.yml", tmp_path / "data", logLevel="WARNING"))
    return config, cli.ensure_secrets(config, sys.stderr)


async def test_agent_and_request_that_dial_before_the_daemon_loads_are_served_once_ready(daemon_config):
    config, secrets = daemon_config
    [(agent_id, key)] = await make_agents(config, secrets)
    listeners = bind(config)  # what the entry point does before its imports and the store
    hub_port = listeners.hub[0].getsockname()[1]
    http_port = listeners.http[0].getsockname()[1]
    with socket.create_connection(("127.0.0.1", hub_port), timeout=5) as agent, \
            socket.create_connection(("127.0.0.1", http_port), timeout=5) as client:
        # both dialed while nothing of the daemon runs: queued by the kernel, not refused...
        agent.sendall(upgrade(agent_id, key))
        client.sendall(HEALTHZ)
        # ...and nothing answers them before the daemon is ready
        assert select.select([agent, client], [], [], 0)[0] == []
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(run, config, secrets, shutdown, listeners=listeners))
            assert bound.hub_address[1] == hub_port and bound.http[1] == http_port
            assert await trio.to_thread.run_sync(status_line, agent) == b"HTTP/1.1 101 Switching Protocols"
            assert await trio.to_thread.run_sync(status_line, client) == b"HTTP/1.1 200 "
            shutdown.set()
    # the daemon closed the sockets it took over: the ports are free again
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", hub_port))


async def test_run_without_listeners_binds_its_own_ports(daemon_config):
    """Tests and tools that `nursery.start(run, config, secrets, shutdown)` keep working."""
    config, secrets = daemon_config
    [(agent_id, key)] = await make_agents(config, secrets)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(run, config, secrets, shutdown)
        with socket.create_connection(bound.hub_address, timeout=5) as agent:
            agent.sendall(upgrade(agent_id, key))
            assert await trio.to_thread.run_sync(status_line, agent) == b"HTTP/1.1 101 Switching Protocols"
        shutdown.set()


@pytest.mark.parametrize("setting", ["ws", "http"])
def test_a_port_in_use_stops_the_daemon_with_one_clear_line_and_exit_code_1(tmp_path, setting):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path / "kahuna.yml", tmp_path / "data", **{setting: {"port": port}})
        out = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"kahuna: error: global.{setting}: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_an_agent_dialing_a_restarting_kahuna_is_queued_and_served(tmp_path):
    """End to end, as systemd restarts it: the agent dials from the moment the process exists;
    its connection is accepted by the kernel while the daemon still loads (no `listening` line
    yet) and the daemon then serves it."""
    with socket.socket() as a, socket.socket() as b:  # two free ports for a fixed config
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        hub_port, http_port = a.getsockname()[1], b.getsockname()[1]
    config = write_config(tmp_path / "kahuna.yml", tmp_path / "data",
                          ws={"port": hub_port}, http={"port": http_port})
    made = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(config), "agent", "create",
                           "--name", "early", "--type", "Kaktus", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    agent = json.loads(made.stdout)
    stderr = tmp_path / "kahuna.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "kahuna.py"), "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", hub_port), timeout=30)
                break
            except ConnectionRefusedError:  # the interpreter itself is still starting
                assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
                time.sleep(0.002)
        with sock:
            loading = " listening " not in stderr.read_text()
            sock.sendall(upgrade(agent["id"], agent["key"]))
            assert status_line(sock) == b"HTTP/1.1 101 Switching Protocols"
        if not loading:
            pytest.skip("the daemon was ready before the agent connected: nothing queued to show")
    finally:
        proc.terminate()
        proc.wait(10)


async def test_lazily_unsealed_keys_answer_as_the_eagerly_unsealed_ones_did(daemon_config):
    """Keys are unsealed on first lookup; what a lookup answers is unchanged: the stored key,
    nothing for a key sealed under another server secret, and a rotation or deletion made by
    another process while this one was starting is seen before serving (reload_if_changed)."""
    config, secrets = daemon_config
    (a_id, a_key), (b_id, _), (c_id, _) = await make_agents(config, secrets, 3)
    async with prepared_store(config) as store:
        resources = Resources(store, config=config, secrets=secrets)
        creds = StoredAgentCredentials(resources, secrets.server_secret)
        assert await creds.load_all() == 3
        # another process (the CLI) rotates b's key and deletes c after the load
        other = AgentKeys(resources, StoredAgentCredentials(resources, secrets.server_secret))
        _, b_key = await other.issue(b_id, announce=False)
        await other.forget(c_id)
        await resources.delete("agent", c_id)
        await other.credentials.bump_marker()
        assert await creds.reload_if_changed() is True
        assert creds.lookup(a_id).key == a_key and creds.lookup(a_id).agent_type == "Kaktus"
        assert creds.lookup(b_id).key == b_key
        assert creds.lookup(c_id) is None and c_id not in creds
        assert await creds.reload_if_changed() is False
        # a key sealed under another server secret does not open: as if it was not there
        wrong = StoredAgentCredentials(resources, "another-server-secret-" + "x" * 40)
        await wrong.load_all()
        assert wrong.lookup(a_id) is None and a_id not in wrong and len(wrong) == 0
    assert set(agent_kinds.AGENT_TYPES) == set(cli.AGENT_TYPE_CHOICES)
