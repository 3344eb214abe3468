"""One reader for every session socket: a private level-triggered epoll, awaited through trio.

With a reader task per session every reply cost a task switch and two epoll_ctl calls (trio
registers and unregisters a descriptor for each wait); here every session socket stays
registered once, the hub's one reader task waits on the epoll's own descriptor and, when it is
readable, hands each ready socket to its session (`on_readable`: recv, parse, resolve -- never
blocking). reference/hub-performance-probe.md measured this at about half the CPU per call of a
reader task per session (variants 6b -> 6c) and a few KiB less per session.

Level-triggered: a session that did not read everything is reported again on the next pass.
A handler that raises costs its own session (`on_reader_error`), never the reader.
Linux only (select.epoll), as trio's own I/O manager here.
"""

from __future__ import annotations

import select
from typing import Any, Protocol

import trio

from kahuna.logs import get_logger

log = get_logger("kahuna.hub")

_MAX_EVENTS = 1024


class Readable(Protocol):
    def on_readable(self) -> None: ...
    def on_reader_error(self, exc: BaseException) -> None: ...


class Poller:
    __slots__ = ("_epoll", "_handlers")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._handlers: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._handlers)

    def _ensure(self) -> select.epoll:
        if self._epoll is None:
            self._epoll = select.epoll()
        return self._epoll

    def add(self, fd: int, handler: Readable) -> None:
        self._ensure().register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    def remove(self, fd: int) -> None:
        """Stop watching `fd` (idempotent); call before closing it."""
        if self._handlers.pop(fd, None) is not None and self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    async def run(self) -> None:
        """Read every ready session socket until cancelled (the hub runs one of these)."""
        epoll = self._ensure()
        handlers, wait, poll = self._handlers, trio.lowlevel.wait_readable, epoll.poll
        try:
            while True:
                await wait(epoll.fileno())
                for fd, _ in poll(0, _MAX_EVENTS):
                    handler = handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler.on_readable()
                    except Exception as exc:        # a bug costs one session, never the hub
                        log.exception("agent session reader failed")
                        handler.on_reader_error(exc)
        finally:
            self._epoll = None
            handlers.clear()
            epoll.close()
