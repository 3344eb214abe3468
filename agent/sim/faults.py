"""Fault injection for simulated agents: per method, fail with a message, answer late, or drop
the connection while the call is in flight -- what compute's undo paths must survive.

Rules are set from any thread (a sync test drives Kahuna with the official client while the sims
run in a trio loop of their own), so they sit behind a lock. Every call is also logged, with its
outcome, for tests to assert what Kahuna asked for.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .model import SimError


@dataclass
class Rule:
    kind: str                 # fail | delay | late | drop
    arg: Any                  # the message, the seconds, or None
    remaining: int | None     # None: every call
    when: Callable[[Any], bool] | None = None  # only calls whose params it accepts (None: all)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, str], Rule] = {}
        self._calls: list[tuple[str, Any, str]] = []

    # ---------------------------------------------------------------- setting

    def _set(self, method: str, kind: str, arg: Any, times: int | None,
             when: Callable[[Any], bool] | None = None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 (or None: every call)")
        with self._lock:
            self._rules[(method, kind)] = Rule(kind, arg, times, when)

    def fail(self, method: str, message: str, times: int | None = None) -> None:
        """`method` answers the error `message` instead of doing anything."""
        self._set(method, "fail", message, times)

    def delay(self, method: str, seconds: float, times: int | None = None) -> None:
        """`method` answers after `seconds` (then runs normally, unless it also fails)."""
        self._set(method, "delay", float(seconds), times)

    def delay_reply(self, method: str, seconds: float, times: int | None = None,
                    when: Callable[[Any], bool] | None = None) -> None:
        """`method` does its work at once, then answers after `seconds`: a caller that dies
        meanwhile never learns that it was done (a crash test's worst case). `when(params)`:
        only the calls it accepts (e.g. those naming one volume)."""
        self._set(method, "late", float(seconds), times, when)

    def drop(self, method: str, times: int | None = 1, down_for: float | None = 0.0) -> None:
        """The connection is cut while `method` runs: no reply, nothing done. The agent then
        stays away `down_for` seconds (None: until `start()`) before it dials again."""
        if down_for is not None and down_for < 0:
            raise ValueError("down_for must be >= 0 (or None: until start())")
        self._set(method, "drop", down_for, times)

    def clear(self, method: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._rules if method is None or k[0] == method]:
                del self._rules[key]

    def parse(self, spec: str) -> None:
        """CLI form: `METHOD=fail:MESSAGE`, `METHOD=delay:SECONDS`, `METHOD=drop[:DOWN_SECONDS]`."""
        method, _, action = spec.partition("=")
        kind, _, arg = action.partition(":")
        if not method or kind not in ("fail", "delay", "drop"):
            raise ValueError(f"bad fault {spec!r}: expected METHOD=fail:MSG|delay:S|drop")
        if kind == "fail":
            self.fail(method, arg or f"{method}: injected failure")
        elif kind == "delay":
            self.delay(method, float(arg))
        else:
            self.drop(method, times=None, down_for=float(arg) if arg else 0.0)

    # ---------------------------------------------------------------- reading

    def calls(self) -> list[tuple[str, Any, str]]:
        with self._lock:
            return list(self._calls)

    def _take(self, method: str, kind: str, params: Any = None) -> Rule | None:
        with self._lock:
            rule = self._rules.get((method, kind))
            if rule is None or (rule.when is not None and not rule.when(params)):
                return None
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del self._rules[(method, kind)]
            return rule

    def _log(self, method: str, params: Any, outcome: str) -> None:
        with self._lock:
            self._calls.append((method, params, outcome))

    # ---------------------------------------------------------------- wrapping

    def wrap(self, handlers: dict[str, Callable], *, drop: Callable[[float | None], Any],
             after: Callable[[], None] | None = None) -> dict[str, Callable]:
        """The same handlers, disturbed by the rules; `drop(down_for)` cuts the connection (async),
        `after()` runs once each call has ended (a state dump)."""
        def wrap_one(name: str, fn: Callable) -> Callable:
            async def run(params: Any) -> Any:
                logged = copy.deepcopy(params)
                outcome = "dropped"
                try:
                    rule = self._take(name, "delay")
                    if rule is not None:
                        await trio.sleep(rule.arg)
                    rule = self._take(name, "drop")
                    if rule is not None:
                        await drop(rule.arg)
                        await trio.sleep_forever()      # cancelled with the session
                    rule = self._take(name, "fail")
                    if rule is not None:
                        outcome = f"error: {rule.arg}"
                        raise SimError(rule.arg)
                    try:
                        result = fn(params)
                        if hasattr(result, "__await__"):
                            result = await result
                    except Exception as exc:
                        outcome = f"error: {exc}"
                        raise
                    outcome = "ok"
                    rule = self._take(name, "late", logged)
                    if rule is not None:
                        await trio.sleep(rule.arg)
                    return result
                finally:
                    self._log(name, logged, outcome)
                    if after is not None:
                        after()
            return run
        return {name: wrap_one(name, fn) for name, fn in handlers.items()}
