"""Store reads and writes of the agent connect hooks, coalesced across a connect storm.

A reconnect storm runs the Kaktus connect hooks of thousands of agents within seconds, and each
hook read the store on its own: the agent's document, then every Kaktus and every storage pool
to find those listing the agent -- one worker-thread hop into SQLite (or one MongoDB round trip)
per read, per agent; and the first connect of each wrote its capabilities in a transaction of its
own (one WAL sync each: 10,000 agents kept the store busy for seconds after they were all in).
`Coalescer` answers many concurrent lookups (or writes) with one query:

- a lookup joins the *open* batch (or opens one); the batch's first caller (its leader) waits
  for the query in flight, if any, then closes the batch and runs one query for every key it
  gathered meanwhile. So batches grow with the load by themselves: one key per query when agents
  come one by one, hundreds per query in a storm -- no timer, no added latency when quiet.
- writes the same way: a caller's write is committed (with the rest of its batch, one
  transaction: `Store.update_fields_many`) before the caller is answered, so an acknowledged
  write is on disk as before; only the writes that change something are made at all.
- nothing is cached: each batch's query starts after every one of its callers asked, so an
  answer is at least as fresh as the caller's own read would have been (a Kaktus or pool created
  or changed before the lookup is seen; one written later is the next batch's business, exactly
  as for a read of its own). Answers live only as long as their batch.
- structured: the query runs in the leader's own task (no background task, nothing left
  running); an error of the query reaches every caller of the batch (each gets its own copy of
  the exception); a cancelled caller just leaves -- a cancelled *leader* hands the batch back, and
  the waiting callers retry (one of them leads); every lookup has a deadline (`timeout`,
  `trio.TooSlowError`), leaders included.

`ConnectStore` holds the lookups and the write the hooks make (kahuna.orchestrator.agent_hooks).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import trio

from kahuna.resources.errors import NotFoundError, Unavailable
from kahuna.resources.service import utcnow
from kahuna.store import errors as store_errors
from kahuna.store.base import is_valid_id

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BATCH = 500     # keys per query (an `$in` of 500 ids is one SQLite statement)

Doc = dict[str, Any]


class _Batch:
    __slots__ = ("keys", "args", "done", "answers", "error", "orphaned")

    def __init__(self) -> None:
        self.keys: dict[Any, int] = {}      # key -> callers still to answer
        self.args: dict[Any, Any] = {}      # key -> its argument (the last caller's), in order
        self.done = trio.Event()
        self.answers: Mapping[Any, Any] | None = None
        self.error: Exception | None = None
        self.orphaned = False               # its leader was cancelled before the answers came


class Coalescer(Generic[K, V]):
    """Concurrent `get(key[, arg])` calls answered by one `fetch(args)` per batch (see the module
    doc). `fetch` gets the batch's keys, each with its argument (None for a plain lookup; for the
    same key twice in one batch, the later caller's), and answers a mapping key -> value; a key
    it leaves out gets `missing(key)` raised
    (default KeyError). When several callers of one batch asked for the same key, the last one
    answered gets the value and the others `copy(value)` (default copy.deepcopy), so that no
    two callers share a mutable answer. `queries` counts the fetches made (tests, the curious)."""

    def __init__(self, fetch: Callable[[dict[K, Any]], Awaitable[Mapping[K, V]]], *,
                 timeout: float = DEFAULT_TIMEOUT, max_batch: int = DEFAULT_MAX_BATCH,
                 missing: Callable[[K], Exception] = KeyError,
                 copy: Callable[[V], V] = copy.deepcopy) -> None:
        if max_batch < 1 or timeout <= 0:
            raise ValueError("max_batch must be >= 1 and timeout > 0")
        self._fetch = fetch
        self.timeout = timeout
        self.max_batch = max_batch
        self._missing = missing
        self._copy = copy
        self._open: _Batch | None = None    # gathering keys; its leader has not queried yet
        self._running: _Batch | None = None  # its query is in flight
        self.queries = 0

    async def get(self, key: K, arg: Any = None) -> V:
        # The deadline: a batch's leader waits under a CancelScope with its own deadline; the
        # other callers wait for the batch, which ends by that deadline at the latest (the
        # leader came first, so it is earlier than theirs), then retry with what is left of
        # their own. One scope per batch, not per caller (a scope per lookup was 5 % of the
        # hub's CPU in a connect storm).
        give_up = trio.current_time() + self.timeout
        while True:
            batch = self._open
            if batch is None or len(batch.keys) >= self.max_batch:
                batch = self._open = _Batch()
                batch.keys[key] = 1
                batch.args[key] = arg
                with trio.CancelScope(deadline=give_up) as scope:
                    try:
                        await self._lead(batch)
                    finally:
                        batch.keys[key] -= 1
                if scope.cancelled_caught:
                    break
            else:
                batch.keys[key] = batch.keys.get(key, 0) + 1
                batch.args.pop(key, None)
                batch.args[key] = arg
                try:
                    await batch.done.wait()
                finally:
                    batch.keys[key] -= 1
            if not batch.orphaned:
                return self._answer(batch, key)
            if trio.current_time() >= give_up:
                break
        raise trio.TooSlowError(f"no answer within {self.timeout} s")

    async def _lead(self, batch: _Batch) -> None:
        try:
            while self._running is not None:   # keys keep joining `batch` meanwhile
                await self._running.done.wait()
            await trio.lowlevel.checkpoint()   # the hooks woken with us join too
            if self._open is batch:
                self._open = None              # closed: later keys open the next batch
            self._running = batch
            self.queries += 1
            try:
                batch.answers = await self._fetch(dict(batch.args))
            except Exception as exc:
                batch.error = exc
            finally:
                self._running = None
        except BaseException:                  # cancelled (its deadline, its session ended)
            batch.orphaned = True
            if self._open is batch:
                self._open = None
            raise
        finally:
            batch.done.set()

    def _answer(self, batch: _Batch, key: K) -> V:
        if batch.error is not None:
            # one exception object raised in many tasks would share (and garble) a traceback
            raise copy.copy(batch.error) from batch.error
        assert batch.answers is not None
        try:
            value = batch.answers[key]
        except KeyError:
            raise self._missing(key) from None
        return self._copy(value) if batch.keys[key] else value


class ConnectStore:
    """The connect hooks' store work, each coalesced: an agent's document, the documents of a
    kind (`kaktus`, `storage_pool`, `kiwi`) whose `agent_ids` list an agent, and a write of an
    agent's fields."""

    def __init__(self, resources: Any, *, timeout: float = DEFAULT_TIMEOUT,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.resources = resources
        self._agents: Coalescer[str, Doc] = Coalescer(
            self._fetch_agents, timeout=timeout, max_batch=max_batch,
            missing=lambda agent_id: NotFoundError(f"Agent {agent_id} not found"))
        self._listings: dict[str, Coalescer[str, list[Doc]]] = {}
        self._agent_writes: Coalescer[str, Doc] = Coalescer(
            self._write_agents, timeout=timeout, max_batch=max_batch, copy=lambda doc: doc,
            missing=lambda agent_id: NotFoundError(f"Agent {agent_id} not found"))
        self._timeout, self._max_batch = timeout, max_batch

    async def agent(self, agent_id: str) -> Doc:
        """The agent's document (NotFoundError when it is not there), as `Resources.get` would."""
        if not is_valid_id(agent_id):
            raise NotFoundError(f"Agent {agent_id!r} not found")
        return await self._agents.get(agent_id.lower())

    async def listing(self, kind: str, agent_id: str) -> list[Doc]:
        """Documents of `kind` listing `agent_id`, as `compute.listing_agent` answers them."""
        coalescer = self._listings.get(kind)
        if coalescer is None:
            async def fetch(agent_ids: dict[str, Any], kind: str = kind) -> dict[str, list[Doc]]:
                return _by_agent(await self.resources.list(kind), agent_ids)
            coalescer = self._listings[kind] = Coalescer(fetch, timeout=self._timeout,
                                                         max_batch=self._max_batch)
        return await coalescer.get(agent_id)

    async def set_agent_fields(self, agent_id: str, fields: Mapping[str, Any]) -> Doc:
        """`Resources.set_fields("agent", ...)`, committed with the other writes of its batch;
        answers the document as written (NotFoundError when the agent is gone)."""
        if not is_valid_id(agent_id):
            raise NotFoundError(f"Agent {agent_id!r} not found")
        return await self._agent_writes.get(agent_id.lower(), {**fields, "updated_at": utcnow()})

    async def _fetch_agents(self, agent_ids: dict[str, Any]) -> dict[str, Doc]:
        docs = await self.resources.list("agent", _id={"$in": list(agent_ids)})
        return {doc["_id"].lower(): doc for doc in docs}

    async def _write_agents(self, changes: dict[str, Mapping[str, Any]]) -> dict[str, Doc]:
        try:
            return await self.resources.store.update_fields_many("agent", changes)
        except store_errors.Unavailable as exc:
            raise Unavailable(f"database unavailable: {exc}") from None

    @property
    def queries(self) -> int:
        return (self._agents.queries + self._agent_writes.queries
                + sum(c.queries for c in self._listings.values()))


def _by_agent(docs: Iterable[Doc], agent_ids: Iterable[str]) -> dict[str, list[Doc]]:
    """One scan of a kind's documents -> for each agent, the documents listing it (each caller
    gets its own copies: hooks may change what they got)."""
    found: dict[str, list[Doc]] = {agent_id: [] for agent_id in agent_ids}
    for doc in docs:
        for agent_id in set(doc.get("agent_ids") or ()):
            listed = found.get(agent_id)
            if listed is not None:
                listed.append(copy.deepcopy(doc))
    return found
