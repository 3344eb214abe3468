"""Simulated agents inside a test process: start them, disturb them, look into them.

Two ways to use the same objects:
* trio tests: `sim = SimKaktus(id, key, url, ...)`, `await nursery.start(sim.run)`.
* sync tests (the official client is blocking): `with SimHost() as host: k = host.kaktus(...)`.
  The host runs one trio loop in a helper thread for every sim it holds (joined when the `with`
  ends); the test thread reads their state through `trio.from_thread`, so it never sees a model
  half-way through a call.
Every sim talks to the hub over a real WebSocket with the real SDK.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ..sdk import Agent
from .cidata import read_iso
from .faults import Faults
from .kontroller import KontrollerModel
from .model import KaktusModel, KiwiModel, SimError
from .services import handlers_for, kontroller_handlers

FAST_RECONNECT = {"backoff_initial": 0.1, "backoff_max": 1.0}


class SimAgent:
    """One agent identity with its model; restartable (`stop()` then `start()`)."""

    agent_type = ""

    def __init__(self, agent_id: str, key: str, endpoint: str, handlers: dict[str, Callable], *,
                 state_file: str | Path | None = None, **agent_kwargs: Any) -> None:
        self.agent_id, self.key, self.endpoint = agent_id, key, endpoint
        self.faults = Faults()
        self.state_file = Path(state_file) if state_file else None
        self._handlers = self.faults.wrap(handlers, drop=self._drop, after=self.dump_state)
        self._agent_kwargs = {**FAST_RECONNECT, **agent_kwargs}
        self.agent = self._new_agent()
        self._host: SimHost | None = None
        self._nursery: trio.Nursery | None = None
        self._done: trio.Event | None = None

    def _new_agent(self) -> Agent:
        return Agent(self.agent_type, self.agent_id, self.key, self.endpoint,
                     handlers=self._handlers, **self._agent_kwargs)

    async def _drop(self, down_for: float | None) -> None:
        agent = self.agent
        await agent.drop_connection()
        if down_for is None or down_for > 0:
            agent.stop()                       # stays away: no reconnection by the SDK
            if down_for is not None and self._nursery is not None:
                self._nursery.start_soon(self._come_back, agent, down_for)

    async def _come_back(self, agent: Agent, after: float) -> None:
        await trio.sleep(after)
        if self.agent is agent:                # not restarted by the test meanwhile
            self.astart()

    # ---------------------------------------------------------------- life cycle (trio side)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `stop()` disconnects the agent, `start()` brings it back."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._launch()
            task_status.started()
            await trio.sleep_forever()

    def _launch(self) -> None:
        assert self._nursery is not None
        if self.agent.stopping:
            self.agent = self._new_agent()
        done = self._done = trio.Event()
        agent = self.agent

        async def serve() -> None:
            try:
                await agent.run()
            finally:
                done.set()
        self._nursery.start_soon(serve)

    async def astop(self) -> None:
        self.agent.stop()
        if self._done is not None:
            with trio.move_on_after(self.agent.close_timeout + 2):
                await self._done.wait()

    def astart(self, endpoint: str | None = None) -> None:
        if endpoint is not None and endpoint != self.endpoint:
            self.endpoint = endpoint
            self.agent.stop()                  # the old one closes by itself
            self._launch()
            return
        if self._done is None or self._done.is_set():
            self._launch()

    # ---------------------------------------------------------------- sync side

    def _sync(self, fn: Callable[[], Any]) -> Any:
        host = self._host
        if host is None or threading.current_thread() is host.thread:
            return fn()
        return host.run_sync(fn)

    def stop(self) -> None:
        """Disconnect (close 1000) and stay away; the model is kept."""
        if self._host is None:
            self.agent.stop()
        else:
            self._host.run(self.astop)

    def start(self, endpoint: str | None = None) -> None:
        """Connect again after `stop()` (or a `drop(down_for=None)`); `endpoint`: to another hub
        URL (a Kahuna restarted on new ports)."""
        self._sync(lambda: self.astart(endpoint))

    @property
    def connected(self) -> bool:
        return self.agent.connected and self.agent.registered

    def wait_connected(self, timeout: float = 15.0) -> "SimAgent":
        """Block until the hub has asked (and got) this agent's Capabilities."""
        _wait(lambda: self.connected, f"{self.agent_type} {self.agent_id} to connect "
              f"({self.agent.last_error or 'no error yet'})", timeout)
        return self

    def wait_disconnected(self, timeout: float = 15.0) -> "SimAgent":
        _wait(lambda: not self.agent.connected, f"{self.agent_id} to disconnect", timeout)
        return self

    def calls(self, method: str | None = None) -> list[tuple[str, Any, str]]:
        return [c for c in self.faults.calls() if method is None or c[0] == method]

    def snapshot(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "connected": self.connected,
                "sessions": self.agent.sessions,
                "calls": [[m, p, o] for m, p, o in self.faults.calls()]}

    def dump_state(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(), default=str))
        os.replace(tmp, self.state_file)


class SimKaktus(SimAgent):
    """A simulated Kaktus (hypervisor + its Ceph): upstream's RPCs over `KaktusModel`."""

    agent_type = "Kaktus"

    def __init__(self, agent_id: str, key: str, endpoint: str, *, model: KaktusModel | None = None,
                 pools: dict[str, int] | None = None, node: dict[str, Any] | None = None,
                 libvirt_address: str = "127.0.0.1", libvirt_port: int | None = None,
                 filesystems: list[str] | None = None, state_file: str | Path | None = None,
                 **agent_kwargs: Any) -> None:
        self.model = model or KaktusModel(node=node, pools=pools, auto_create_pools=pools is None,
                                          libvirt_address=libvirt_address,
                                          libvirt_port=libvirt_port, filesystems=filesystems)
        super().__init__(agent_id, key, endpoint, handlers_for("Kaktus", self.model),
                         state_file=state_file, **agent_kwargs)

    # inspection ---------------------------------------------------------------

    def images(self, pool: str) -> dict[str, dict[str, Any]]:
        def read() -> dict[str, dict[str, Any]]:
            p = self.model.pools.get(pool)
            return {} if p is None else {v.name: _image(v) for v in p.volumes.values()}
        return self._sync(read)

    def image(self, pool: str, name: str) -> dict[str, Any] | None:
        return self.images(pool).get(name)

    def iso_bytes(self, pool: str, name: str) -> bytes:
        def read() -> bytes:
            p = self.model.pools.get(pool)
            volume = p.volumes.get(name) if p else None
            if volume is None or volume.content is None:
                raise SimError(f"no ISO image {pool}/{name} on {self.agent_id}")
            return bytes(volume.content)
        return self._sync(read)

    def iso_files(self, pool: str, name: str) -> dict[str, str]:
        """The cloud-init files as the instance reads them from its CD-ROM."""
        return read_iso(self.iso_bytes(pool, name))

    def domains(self) -> dict[str, dict[str, Any]]:
        return self._sync(lambda: {n: i.view() for n, i in self.model.instances.items()})

    def domain(self, name: str) -> dict[str, Any] | None:
        return self.domains().get(name)

    def exports(self) -> dict[int, dict[str, Any]]:
        return self._sync(lambda: copy.deepcopy(self.model.nfs_exports))

    def subvolumes(self, fs: str) -> list[str]:
        return self._sync(lambda: sorted(self.model.filesystems.get(fs, {})))

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        out["pools"] = {name: {"capacity": p.capacity, "allocated": p.allocated,
                               "images": {v.name: _image(v) for v in p.volumes.values()},
                               "isos": {v.name: _iso_or_none(v.content) for v in p.volumes.values()
                                        if v.kind == "iso"}}
                        for name, p in self.model.pools.items()}
        out["domains"] = {n: i.view() for n, i in self.model.instances.items()}
        out["exports"] = {str(k): v for k, v in self.model.nfs_exports.items()}
        out["filesystems"] = {fs: sorted(subs) for fs, subs in self.model.filesystems.items()}
        return out


class SimKiwi(SimAgent):
    """A simulated Kiwi (DNS): upstream's RPCs over `KiwiModel`."""

    agent_type = "Kiwi"

    def __init__(self, agent_id: str, key: str, endpoint: str, *, model: KiwiModel | None = None,
                 state_file: str | Path | None = None, **agent_kwargs: Any) -> None:
        self.model = model or KiwiModel()
        super().__init__(agent_id, key, endpoint, handlers_for("Kiwi", self.model),
                         state_file=state_file, **agent_kwargs)

    def records(self) -> dict[str, list[str]]:
        """{fqdn with trailing dot: [addresses]} as served now."""
        return self._sync(self.model.records)

    def resolve(self, name: str) -> list[str]:
        return self._sync(lambda: self.model.resolve(name))

    def reloads(self) -> int:
        return self._sync(lambda: self.model.reloads)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "zones": copy.deepcopy(self.model.zones),
                "records": self.model.records(), "reloads": self.model.reloads}


class SimKontroller(SimAgent):
    """An appliance's Kontroller, booted from the cloud-init files of its ISO."""

    agent_type = "Kontroller"

    def __init__(self, read_files: Callable[[], dict[str, str]], *, endpoint: str | None = None,
                 metadata_url: str | None = None, state_file: str | Path | None = None,
                 **agent_kwargs: Any) -> None:
        self.model = KontrollerModel(read_files, metadata_url=metadata_url)
        meta = self.model.meta()
        for key in ("kowabunga_controller_agent_id", "kowabunga_controller_agent_token"):
            if not meta.get(key):
                raise SimError(f"meta-data has no {key}: not an appliance ISO")
        endpoint = endpoint or meta.get("kowabunga_controller_uri")
        if not endpoint:
            raise SimError("meta-data has no kowabunga_controller_uri")
        super().__init__(str(meta["kowabunga_controller_agent_id"]),
                         str(meta["kowabunga_controller_agent_token"]), endpoint,
                         kontroller_handlers(self.model), state_file=state_file, **agent_kwargs)

    def state(self) -> dict[str, Any]:
        return self.model.state()

    def wait_reloads(self, count: int = 1, timeout: float = 15.0) -> dict[str, Any]:
        _wait(lambda: self.model.reloads >= count,
              f"Kontroller {self.agent_id}: {count} reload(s) (errors: {self.model.errors[-3:]})",
              timeout)
        return self.state()

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), **self.model.state()}


def _image(volume: Any) -> dict[str, Any]:
    return {"size": volume.size, "kind": volume.kind, "parent": volume.parent,
            "source": volume.source_url, "snapshots": sorted(volume.snapshots),
            "children": sorted(volume.children)}


@functools.lru_cache(maxsize=256)
def _iso_or_none(content: bytes | None) -> dict[str, str] | None:
    """Parsed once per content: the state dump is rewritten after every call."""
    try:
        return read_iso(content) if content else None
    except SimError:
        return None


def _wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


class SimHost:
    """A trio loop in a helper thread hosting simulated agents for a synchronous test."""

    def __init__(self, *, stop_timeout: float = 10.0) -> None:
        self.stop_timeout = stop_timeout
        self.thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._closing: trio.Event | None = None
        self._error: BaseException | None = None
        self.sims: list[SimAgent] = []

    def __enter__(self) -> "SimHost":
        self.thread = threading.Thread(target=self._main, name="sim-host", daemon=True)
        self.thread.start()
        if not self._ready.wait(10) or self._token is None:
            raise RuntimeError(f"sim host did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:   # reported by close(); the thread must not die silently
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._closing = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._closing.wait()
            with trio.move_on_after(self.stop_timeout):
                async with trio.open_nursery() as stopping:   # close 1000 each, all at once
                    for sim in self.sims:
                        stopping.start_soon(sim.astop)
            nursery.cancel_scope.cancel()

    def close(self) -> None:
        if self.thread is None:
            return
        if self._token is not None and self._closing is not None:
            try:
                trio.from_thread.run_sync(self._closing.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self.thread.join(self.stop_timeout + 5)
        for sim in self.sims:
            if isinstance(sim, SimKaktus):
                sim.model.close()
        self.thread = None

    # ---------------------------------------------------------------- bridges

    def run_sync(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` in the sims' loop (between two calls of theirs) and return its result."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def run(self, afn: Callable[[], Any]) -> Any:
        return trio.from_thread.run(afn, trio_token=self._token)

    def add(self, sim: SimAgent) -> SimAgent:
        sim._host = self
        self.sims.append(sim)
        assert self._nursery is not None
        self.run(lambda: self._nursery.start(sim.run))   # type: ignore[union-attr]
        return sim

    def kaktus(self, agent_id: str, key: str, endpoint: str, **kwargs: Any) -> SimKaktus:
        return self.add(SimKaktus(agent_id, key, endpoint, **kwargs))   # type: ignore[return-value]

    def kiwi(self, agent_id: str, key: str, endpoint: str, **kwargs: Any) -> SimKiwi:
        return self.add(SimKiwi(agent_id, key, endpoint, **kwargs))   # type: ignore[return-value]

    def kontroller(self, kaktus: SimKaktus, pool: str, volume: str, **kwargs: Any) -> SimKontroller:
        """The appliance whose CD-ROM is `pool/volume` on that simulated Kaktus (re-read at
        every Reload, as the real agent re-reads /dev/sr0)."""
        return self.add(SimKontroller(lambda: kaktus.iso_files(pool, volume), **kwargs))   # type: ignore[return-value]

    def kontroller_from_iso(self, files: dict[str, str], **kwargs: Any) -> SimKontroller:
        frozen = dict(files)
        return self.add(SimKontroller(lambda: frozen, **kwargs))   # type: ignore[return-value]
