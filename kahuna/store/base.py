"""The narrow store interface every backend implements (design.md, Persistence).

Documents are plain dicts. `_id` is the 24-hex string form of an ObjectId at this interface
(backends convert it to whatever they keep); references to other documents (`region_id`, ...) are
24-hex strings too. Every method is async and never blocks the trio loop: backends run their
blocking driver in a worker thread (`in_worker`, below) under a `CapacityLimiter`.

Filters are deliberately tiny, so that the embedded and the mongo backends mean the same thing:
`{field: value}` is equality (a dotted field reaches into a sub-document) and
`{field: {"$in": [v, ...]}}` is membership. Anything else raises ValueError.

Compared values are scalars (str, int, float, bool, None) with MongoDB's meaning: `True` never
equals `1`, `1` equals `1.0`, and `None` matches both an explicit null and a missing field.
Equality against array-valued fields is not part of the contract (MongoDB would match an element;
the embedded backend would not). The checks below are shared by every backend so that both
refuse exactly the same filters, sorts and updates.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Awaitable, Callable, Iterable, Mapping, TypeVar

import trio
from bson import ObjectId

from kahuna.store.errors import NotFound

Document = dict[str, Any]
Filter = Mapping[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Index:
    """An index on one collection. Names are explicit: both backends use them as given."""

    name: str
    fields: tuple[str, ...]
    unique: bool = False


# Field paths and collection names end up inside SQL text in the embedded backend (an expression
# index is only used when the query spells the same expression, so they cannot be parameters):
# keep them to plain identifiers.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Condition:
    """One validated filter term: `field` equals one of `values` (one value unless from `$in`)."""

    field: str
    values: tuple[Any, ...]
    is_in: bool = False


def check_collection(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.lower().startswith("sqlite_"):
        raise ValueError(f"invalid collection name {name!r}")
    return name


def check_field(path: str) -> str:
    if not isinstance(path, str) or not _FIELD_RE.match(path):
        raise ValueError(f"invalid field path {path!r}")
    return path


def parse_filter(filter: Filter | None) -> list[Condition]:
    """Validate a filter (see the module docstring) into conditions; ValueError otherwise."""
    conditions = []
    for field, value in (filter or {}).items():
        check_field(field)
        if isinstance(value, Mapping):
            if set(value) != {"$in"} or isinstance(value["$in"], (str, bytes, Mapping)):
                raise ValueError(f"unsupported filter on {field!r}: {value!r}")
            values, is_in = tuple(value["$in"]), True
        else:
            values, is_in = (value,), False
        for v in values:
            if not isinstance(v, _SCALARS):
                raise ValueError(f"unsupported filter value on {field!r}: {v!r}")
        conditions.append(Condition(field, values, is_in))
    return conditions


def parse_sort(sort: str | None) -> tuple[str, bool] | None:
    """`"field"` / `"-field"` -> (field, descending)."""
    if sort is None:
        return None
    descending = sort.startswith("-")
    return check_field(sort[1:] if descending else sort), descending


def check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int, not {limit!r}")
    return limit


def check_index(index: Index) -> Index:
    """Index names are identifiers too (the embedded backend spells them in SQL)."""
    if not isinstance(index.name, str) or not _NAME_RE.match(index.name) or not index.fields:
        raise ValueError(f"invalid index {index!r}")
    for f in index.fields:
        check_field(f)
    return index


def check_update(fields: Mapping[str, Any]) -> None:
    """Refuse `_id` and overlapping paths (`a` with `a.b`): MongoDB rejects them, so we all do."""
    paths = [check_field(f) for f in fields]
    for p in paths:
        if p == "_id" or p.startswith("_id."):
            raise ValueError("_id cannot be updated")
        if any(q != p and q.startswith(p + ".") for q in paths):
            raise ValueError(f"conflicting update paths under {p!r}")


def new_id() -> str:
    """A fresh ObjectId in its 24-hex API form."""
    return str(ObjectId())


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value)


def _no_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


async def in_worker(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in one of trio's cached worker threads; the calling task waits for it and
    cannot be cancelled meanwhile (as with `trio.to_thread.run_sync`'s default: a sqlite call
    cannot be interrupted). Why not `to_thread.run_sync` itself: per call it also takes trio's
    process-wide thread limiter (one more pass of the scheduler), renames the OS thread twice
    and copies the context for `trio.from_thread`, none of which a store call uses: a hop cost
    ~55-75 µs of CPU that way and ~37-44 µs this way (measured on this project's machine), paid
    on every database call. The thread count stays bounded by the caller's limiter."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: Any) -> None:  # in the worker thread, once fn returned or raised
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(partial(fn, *args), deliver)
    return await trio.lowlevel.wait_task_rescheduled(_no_abort)


class Store(abc.ABC):
    """What the rest of Kahuna may ask of persistence. See the module docstring for filters."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (or open the file) and check it answers; raises Unavailable otherwise."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the database answers now (used by /healthz); never raises."""

    @abc.abstractmethod
    async def ensure_indexes(self, collection: str, indexes: Iterable[Index]) -> None:
        """Create the indexes that do not exist yet (idempotent)."""

    @abc.abstractmethod
    async def get(self, collection: str, doc_id: str) -> Document:
        """The document with this id; NotFound when absent or when the id is malformed."""

    @abc.abstractmethod
    async def find(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: str | None = None,
        limit: int | None = None,
    ) -> list[Document]:
        """Documents matching `filter`, sorted by `sort` (a field, "-field" for descending)."""

    async def find_one(self, collection: str, filter: Filter) -> Document | None:
        found = await self.find(collection, filter, limit=1)
        return found[0] if found else None

    @abc.abstractmethod
    async def count(self, collection: str, filter: Filter | None = None) -> int: ...

    @abc.abstractmethod
    async def insert(self, collection: str, doc: Document) -> Document:
        """Insert `doc` (given an `_id` when it has none); Conflict on a unique index."""

    @abc.abstractmethod
    async def replace(self, collection: str, doc: Document) -> Document:
        """Replace the whole document with the same `_id`; NotFound, Conflict."""

    @abc.abstractmethod
    async def update_fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> Document:
        """Set these top-level (or dotted) fields and answer the document as it now is."""

    @abc.abstractmethod
    async def delete(self, collection: str, doc_id: str) -> None:
        """Remove the document; NotFound when it does not exist."""

    async def update_fields_many(self, collection: str,
                                 changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Document]:
        """`update_fields` for several documents (`changes`: id -> fields), each atomic; answers
        the documents as they now are, by the ids given, leaving out those not found. This
        default writes them one by one (through the subclass's `update_fields`, so wrappers such
        as the HA fence apply); a backend may write the lot in one transaction (the embedded one
        does: a connect storm's capability writes commit once, not once each)."""
        out: dict[str, Document] = {}
        for doc_id, fields in changes.items():
            try:
                out[doc_id] = await self.update_fields(collection, doc_id, fields)
            except NotFound:
                continue
        return out


class GroupJob:
    """One write waiting in a `WriteGroups`; `value` / `error` and `done` are set by the group's
    runner once its group has ended (a backend's job adds what it needs to run)."""

    __slots__ = ("taken", "value", "error", "done")

    def __init__(self) -> None:
        self.taken = False  # in a group being run: no longer cancellable
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False


class WriteGroups:
    """Concurrent writes run in groups (the backends' group commit): a write that finds no group
    running leads the next one, which takes every write queued so far; writes arriving meanwhile
    wait for the group after. Each write is answered only after the group holding it has ended.

    `run(take)` is the backend's: it gets ready (e.g. takes its connection; cancellable, nothing
    is taken yet), calls `take()` (or `take(everything=True)`) for the jobs to run, and must set
    `done` on each of them, with its `value` or `error`. Cancellation: a write cancelled while
    queued leaves the queue and never runs; one whose group is running cannot be stopped: its
    caller waits for the group (bounded by the backend's own timeouts) and gets the answer."""

    def __init__(self, run: Callable[[Callable[..., list]], Awaitable[None]], max_group: int) -> None:
        self._run = run
        self._max = max_group
        self._queue: list[GroupJob] = []
        self._running: trio.Event | None = None  # set when the group being run has ended

    async def submit(self, job: GroupJob) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._queue.append(job)
        while not job.done:
            running = self._running
            try:
                if running is None:  # no group running: this write leads the next one
                    await self._lead()
                else:
                    await running.wait()
            except trio.Cancelled:
                if not job.taken:  # still queued: it leaves the queue and never runs
                    self._queue.remove(job)
                    raise
                with trio.CancelScope(shield=True):  # taken: wait for its group's answer
                    while not job.done:
                        await self._running.wait()
        if job.error is not None:
            error, job.error = job.error, None
            raise error
        return job.value

    def take(self, everything: bool = False) -> list:
        """The jobs of the group being led (at most `max_group`, or the whole queue)."""
        cut = len(self._queue) if everything else self._max
        group, self._queue = self._queue[:cut], self._queue[cut:]
        for job in group:
            job.taken = True
        return group

    async def _lead(self) -> None:
        ended = self._running = trio.Event()
        try:
            await self._run(self.take)
        finally:
            self._running = None
            ended.set()


async def read_shared(store: Store, collection: str, doc_id: str) -> Document | None:
    """The document as the store's id cache holds it (`CachedStore.get_shared`: no copy, the same
    object until a write, an expiry or an eviction replaces it: never mutate it), or a plain
    `get` where there is no cache; None when there is no such document."""
    try:
        return await (getattr(store, "get_shared", None) or store.get)(collection, doc_id)
    except NotFound:
        return None


async def delete_if_present(store: Store, collection: str, doc_id: str) -> bool:
    """Delete a document; False when it was already gone. For the deletes that must be idempotent
    (undos, recovery, clean-up): True tells the caller it removed it, so that what the document
    held is given back once."""
    try:
        await store.delete(collection, doc_id)
    except NotFound:
        return False
    return True
