"""A keep-alive connection's idle timer for hypercorn's trio `TCPServer`: one task per connection
with a lazy deadline, instead of a task cancelled and spawned on every request.

What it replaces (hypercorn 0.18, `TrioSingleTask`): the server stops the timer when a request
arrives (`Updated(idle=False)`) and restarts it once the response is out and the connection is
recycled (`Updated(idle=True)`); each restart takes a `trio.Lock`, cancels the previous timer task
and starts a new one with `nursery.start`, whose caller waits a scheduler round for the new task
to report started. That restart runs on every keep-alive request inside the response's final send
(which `kahuna.api.guard` shields so it completes): ~110 µs of CPU per request, a quarter of the
stack's cheapest one (wrk at 16 connections on a constant-body route inside the daemon, A/B).
(A bare hypercorn + Quart-trio app never pays it: Quart cancels its request task when hypercorn
signals the stream's end, so the restart's lock raises `Cancelled` and the timer is never
restarted -- idle connections then never time out.)

Here the same contract costs a clock read and two assignments per request; the deadline is lazy:
`restart` records when the connection falls idle and `stop` only clears the idle flag, while the
watcher's wait keeps the deadline it was armed with and, woken by it early (the connection was
busy meanwhile, or idle since later), re-arms with the current one -- one wake-up per
`keep_alive_timeout` per busy connection. (Moving the wait's deadline on each `restart` and
`stop`, which re-registers it in trio's deadline table, was ~10-20 µs of a read's CPU.)

The contract, hypercorn's:
- idle (after `restart`): the connection is closed when `keep_alive_timeout` passes, or at once
  when the server is terminating (`context.terminated`), as hypercorn's `_idle_timeout` does;
- busy (after `stop`): nothing closes it; a termination meanwhile closes it once idle again;
- `close()`: the connection is ending (its reader left); the task ends so the connection's task
  group can finish.
The API is `TrioSingleTask`'s (`restart(task_group, action)`, `stop()`), so `TCPServer` calls it
unchanged; `action` is ignored, since this timer's own wait is hypercorn's `_idle_timeout`.
"""

from __future__ import annotations

from math import inf
from typing import Any

import trio


class IdleTimer:
    def __init__(self, server: Any) -> None:
        self._server = server  # hypercorn's TCPServer: its config, context, and close path
        self._idle = False
        self._closed = False
        self._started = False
        self._deadline = inf  # when an idle connection is closed (valid while `_idle`)
        self._wait: trio.CancelScope | None = None  # the watcher's current wait; cancelled to wake it

    async def restart(self, task_group: Any, action: Any = None) -> None:
        if self._closed:
            return
        self._idle = True
        self._deadline = deadline = trio.current_time() + self._server.config.keep_alive_timeout
        wait = self._wait
        if wait is not None:
            if wait.deadline > deadline:  # waiting without a deadline (armed while busy)
                wait.deadline = deadline
            if self._server.context.terminated.is_set():
                wait.cancel()  # terminating: an idle connection closes at once
        if not self._started:
            self._started = True
            task_group.spawn(self._watch)

    async def stop(self) -> None:
        self._idle = False  # the armed deadline stays: woken by it, the watcher re-arms

    def close(self) -> None:
        self._closed = True
        if self._wait is not None:
            self._wait.cancel()

    async def _watch(self) -> None:
        terminated = self._server.context.terminated
        while not self._closed:
            with trio.CancelScope(deadline=self._deadline if self._idle else inf) as wait:
                self._wait = wait
                if terminated.is_set() and not self._idle:
                    await trio.sleep_forever()  # terminating during a request: `restart` wakes it
                else:
                    await terminated.wait()
            self._wait = None
            # woken by the armed deadline, by termination, by `restart` while terminating or
            # `close`; a request may have come meanwhile (`stop`), or ended later than the armed
            # deadline assumed: then wait again, armed with the current deadline
            if self._closed:
                return
            if self._idle and (terminated.is_set() or trio.current_time() >= self._deadline):
                with trio.CancelScope(shield=True):
                    await self._server._initiate_server_close()  # hypercorn's own idle close
                return
