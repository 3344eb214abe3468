"""This node's role in the pair (single, active, passive) and the lease loop that decides it.

Why the timings are safe without comparing clocks: the active counts its lease from the moment
*before* it sent the renewal (`valid_until = sent + leaseSeconds`), a passive counts from the
moment *after* it read an unchanged lease. Every renewal the active believes in was sent before
any read that saw it, so the passive's earliest take time is never before the active's
`valid_until`, whatever the two monotonic clocks' origins. The active stops writing
`fenceMarginSeconds` before `valid_until` and gives each write a deadline that ends before it,
so a write never lands after the twin may have taken over. A process frozen (SIGSTOP) past its
lease resumes with its monotonic clock past `valid_until`: the write check refuses at once, and
the watchdog turns it passive within 0.1 s.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Awaitable, Callable, Iterator

import pymongo
import trio

from kahuna.config import Ha
from kahuna.logs import get_logger
from kahuna.store.errors import Unavailable

from .lease import LeaseStore, LeaseUnavailable, Observed

log = get_logger("kahuna.ha")

SINGLE, ACTIVE, PASSIVE = "single", "active", "passive"
WATCHDOG_SECONDS = 0.1
WRITE_SLACK_SECONDS = 0.25  # a write's deadline ends this long before the lease does


class NotActive(Unavailable):
    """A write refused because this node does not (or no longer safely) hold the lease."""


Hook = Callable[[], Awaitable[Any]]


class Node:
    """The role, read by the HTTP app, the hub admission hook and the fenced store."""

    def __init__(self, settings: Ha | None = None, lease: LeaseStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or Ha()
        self.lease = lease
        self.clock = clock
        self.role = PASSIVE if lease is not None else SINGLE
        self.node_id = self.settings.node_id or socket.gethostname()
        self.holder = {"node": self.node_id, "host": socket.gethostname(), "pid": os.getpid()}
        self.epoch = 0
        self.active_node = ""
        self.changes: dict[str, int] = {}  # role -> times entered (for /metrics)
        self._renewals = 0
        self._valid_until = 0.0
        self._seen: tuple[int, int] | None = None
        self._seen_at = 0.0
        self._on_active: list[Hook] = []
        self._on_passive: list[Hook] = []
        self._active_tasks: list[Callable[..., Awaitable[Any]]] = []
        self._active_scope: trio.CancelScope | None = None
        self._became_active: trio.Event | None = None

    # ------------------------------------------------------------ what others ask

    @property
    def is_single(self) -> bool:
        return self.role == SINGLE

    def serving(self) -> bool:
        """True when this node may serve requests and agents now."""
        return self.role == SINGLE or (self.role == ACTIVE and self._writable_for() > 0)

    def _writable_for(self) -> float:
        return self._valid_until - self.settings.fence_margin_seconds - self.clock()

    @contextlib.contextmanager
    def write_window(self) -> Iterator[None]:
        """Around one store write: refuse unless the lease covers it, and bound the write's
        deadline so it cannot land after the lease ends (one local check, no round trip)."""
        if self.role == SINGLE:
            yield
            return
        if self.role != ACTIVE or self._writable_for() <= 0:
            raise NotActive(f"this Kahuna is {self.role if self.role != ACTIVE else 'fencing'}; "
                            f"the active node is {self.active_node or 'unknown'}")
        with pymongo.timeout(max(0.05, self._valid_until - self.clock() - WRITE_SLACK_SECONDS)):
            yield

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"role": self.role}
        if self.role != SINGLE:
            body["epoch"] = self.epoch
            body["active"] = self.active_node
            body["node"] = self.node_id
        return body

    def on_active(self, hook: Hook) -> None:
        """Run (awaited, bounded by the caller) before this node starts serving as active."""
        self._on_active.append(hook)

    def on_passive(self, hook: Hook) -> None:
        self._on_passive.append(hook)

    def while_active(self, task: Callable[..., Awaitable[Any]]) -> None:
        """A background task (started with nursery.start) that runs only while active."""
        self._active_tasks.append(task)

    # ------------------------------------------------------------ the loop

    async def run(self, single_tasks: bool = True, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Single: run the while-active tasks for ever. Pair: the lease loop + watchdog."""
        async with trio.open_nursery() as nursery:
            if self.role == SINGLE:
                self._count(SINGLE)
                log.info("ha role", role=SINGLE, epoch=0, reason="embedded store: no twin")
                for task in self._active_tasks:
                    await nursery.start(task)
                task_status.started()
                return
            self._became_active = trio.Event()
            self._count(PASSIVE)
            log.info("ha role", role=PASSIVE, epoch=0, reason="starting", node=self.node_id)
            nursery.start_soon(self._watchdog)
            nursery.start_soon(self._supervise)
            task_status.started()
            while True:
                with trio.move_on_after(self.lease.timeout + 1.0):
                    await self._step()
                await trio.sleep(self.settings.renew_seconds)

    async def _call(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    async def _step(self) -> None:
        started = self.clock()
        if self.role == ACTIVE:
            try:
                renewed = await self._call(self.lease.renew, self.epoch, self._renewals)
            except LeaseUnavailable as exc:
                log.warning("ha lease renewal failed", epoch=self.epoch, error=str(exc)[:200])
                return
            if renewed:
                self._renewals += 1
                self._valid_until = started + self.settings.lease_seconds
            else:
                await self._turn_passive("the lease was taken by another node")
            return
        try:
            seen: Observed = await self._call(self.lease.read)
        except LeaseUnavailable as exc:
            log.warning("ha lease read failed", error=str(exc)[:200])
            return
        now = self.clock()
        self.epoch = seen.epoch
        self.active_node = (seen.holder or {}).get("node", "")
        if seen.key != self._seen or seen.holder is None:
            self._seen, self._seen_at = seen.key, now
        if seen.holder is not None and now - self._seen_at < self.settings.lease_seconds:
            return
        started = self.clock()
        try:
            taken = await self._call(self.lease.take, seen, self.holder)
        except LeaseUnavailable as exc:
            log.warning("ha lease take failed", error=str(exc)[:200])
            return
        if not taken:
            return
        self.epoch, self._renewals = seen.epoch + 1, 0
        self._valid_until = started + self.settings.lease_seconds
        self.active_node = self.node_id
        reason = "no lease yet" if seen.holder is None else (
            f"lease of {seen.holder.get('node')} unrenewed for {self.settings.lease_seconds:g}s")
        await self._turn_active(reason)

    async def _turn_active(self, reason: str) -> None:
        # rebuild every in-memory copy of store state before serving: nothing from passive days
        try:
            for hook in self._on_active:
                await hook()
        except Exception as exc:
            log.error("ha cannot turn active: rebuilding from the store failed", error=str(exc)[:200])
            self._valid_until = 0.0
            self._seen, self._seen_at = None, self.clock()
            return
        self.role = ACTIVE
        self._count(ACTIVE)
        log.info("ha role", role=ACTIVE, epoch=self.epoch, reason=reason)
        assert self._became_active is not None
        self._became_active.set()

    async def _turn_passive(self, reason: str) -> None:
        if self.role != ACTIVE:
            return
        self.role = PASSIVE
        self._valid_until = 0.0
        self._seen, self._seen_at = None, self.clock()  # wait a whole lease before retaking
        self._count(PASSIVE)
        log.warning("ha role", role=PASSIVE, epoch=self.epoch, reason=reason)
        if self._active_scope is not None:
            self._active_scope.cancel()
        self._became_active = trio.Event()
        for hook in self._on_passive:
            with trio.move_on_after(5.0):
                try:
                    await hook()
                except Exception as exc:
                    log.error("ha passive hook failed", error=str(exc)[:200])

    async def _watchdog(self) -> None:
        while True:
            if self.role == ACTIVE and self._writable_for() <= 0:
                await self._turn_passive("fenced: lease not renewed in time")
            await trio.sleep(WATCHDOG_SECONDS)

    async def _supervise(self) -> None:
        while True:
            assert self._became_active is not None
            await self._became_active.wait()
            with trio.CancelScope() as scope:
                self._active_scope = scope
                async with trio.open_nursery() as nursery:
                    for task in self._active_tasks:
                        await nursery.start(task)
                    await trio.sleep_forever()
            self._active_scope = None

    def _count(self, role: str) -> None:
        self.changes[role] = self.changes.get(role, 0) + 1
