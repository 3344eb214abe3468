"""The embedded backend: one SQLite file, one table per collection, one JSON document per row.

Why SQLite: `python kahuna.py` must work with no database server (design.md, Persistence), and
SQLite gives us what the contract needs without one: atomic single-row writes, unique indexes and
a WAL that keeps every acknowledged write across a SIGKILL.

How it stays honest to the contract:
- Each row is `(_id TEXT PRIMARY KEY, doc TEXT)`; the JSON document holds every field but `_id`.
  Datetimes are stored as `{"$date": "YYYY-MM-DDTHH:MM:SS.mmmZ"}` (milliseconds, like BSON) and
  come back as aware UTC datetimes, so both backends answer the same values.
- Lookups and unique constraints go through expression indexes on a per-field *key* expression,
  `ifnull(json_extract(doc, '$.f'), x'')`. The `ifnull` folds "missing" and "null" into one value,
  because MongoDB's unique indexes treat them as equal too (SQLite would let NULLs repeat). Queries
  spell the very same expression, which is what lets SQLite use the index.
- `json_extract` answers 1/0 for JSON true/false, so every equality also checks `json_type`:
  `{"flag": True}` never matches `1`, and a string never matches a sub-document's JSON text.
- Writes are committed in groups (a group commit): a write that finds no commit running takes
  every write queued so far (its own included) and runs them on one connection, in one worker
  thread call, in one `BEGIN IMMEDIATE` ... `COMMIT` (one fsync); writes arriving meanwhile queue
  for the next group. Each write is answered only after the COMMIT of the group holding it,
  with `synchronous=FULL`: an acknowledged write is in the WAL on disk, as when each write was its
  own transaction. Why: a create's CPU was dominated by the per-write thread hop and the
  commit's fsync (bench/api.py: ~0.2 ms of ~1.8 ms at 16 clients), which a group pays once.
  Isolation inside a group: each write is one writing statement (`update_fields` reads, then
  writes once), and SQLite undoes a failed statement alone (the default ABORT conflict
  resolution: "backs out any prior changes of the current SQL statement ... the transaction
  remains active"), so one write's unique-index conflict (409), missing row or bad value fails
  that write only; the others of its group commit. A failure of the database itself (I/O
  error, disk full, a failed COMMIT) fails every write of the group, none acknowledged.
  One write alone is a group of one (same statements as before, plus an explicit BEGIN).
- sqlite3 blocks, so every call runs in a worker thread of trio's thread cache (`base.in_worker`: what
  `trio.to_thread.run_sync` does, without its per-call extras) under a `CapacityLimiter`. There
  are exactly `limiter_size` connections (default one) and a call (a read, or a group of writes)
  holds one exclusively for its duration, so a connection is never used by two threads at once
  (hence check_same_thread=False).
- Cancellation: a write cancelled while it waits in the queue leaves it and is never run; once
  its group is running it cannot be stopped (like any call in a worker thread): the caller
  waits for the COMMIT and gets the result (the cancellation is delivered at its next
  checkpoint), so a write that reached the database is never reported as not done.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import trio
from bson import ObjectId

from .base import (
    Condition,
    Document,
    Filter,
    GroupJob,
    Index,
    Store,
    WriteGroups,
    check_collection,
    check_index,
    check_limit,
    check_update,
    in_worker,
    is_valid_id,
    new_id,
    parse_filter,
    parse_sort,
)
from .errors import Conflict, NotFound, Unavailable

T = TypeVar("T")

_PING_TIMEOUT_S = 2.0
_BUSY_TIMEOUT_S = 30.0
_MAX_GROUP = 256  # writes per group commit: bounds one transaction's length, not its fairness


# --- JSON codec ------------------------------------------------------------------------------

def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # naive means UTC, as pymongo reads it
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        value = value.replace(microsecond=value.microsecond // 1000 * 1000, tzinfo=None)
        return {"$date": value.isoformat(timespec="milliseconds") + "Z"}
    raise TypeError(f"cannot store a {type(value).__name__} value")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get("$date"), str):
        return datetime.fromisoformat(obj["$date"]).astimezone(timezone.utc)
    return obj


def _dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body, default=_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _document(doc_id: str, text: str) -> Document:
    return {"_id": doc_id, **json.loads(text, object_hook=_hook)}


def _canonical_id(value: Any) -> Any:
    """ObjectId hex is case-insensitive in MongoDB; the text column is not, so normalise."""
    return str(ObjectId(value)) if is_valid_id(value) else value


# --- SQL fragments (field paths are validated identifiers, safe to inline) -------------------

def _key(field: str) -> str:
    return "_id" if field == "_id" else f"ifnull(json_extract(doc, '$.{field}'), x'')"


def _type(field: str) -> str:
    return f"json_type(doc, '$.{field}')"


def _condition_sql(cond: Condition) -> tuple[str, list[Any]]:
    """One filter term as SQL; values grouped by type so `True` / `1` / `"1"` stay distinct."""
    key = _key(cond.field)
    if cond.field == "_id":
        values = [_canonical_id(v) for v in cond.values]
        return (f"_id IN ({', '.join('?' * len(values))})" if values else "0"), values
    parts: list[str] = []
    params: list[Any] = []
    if any(v is None for v in cond.values):
        parts.append(f"{key} = x''")
    for kind, types in (("str", "('text')"), ("num", "('integer', 'real')")):
        group = [v for v in cond.values if _kind(v) == kind]
        if group:
            parts.append(f"({key} IN ({', '.join('?' * len(group))}) AND {_type(cond.field)} IN {types})")
            params.extend(group)
    for flag in sorted({v for v in cond.values if isinstance(v, bool)}):
        parts.append(f"({key} = {int(flag)} AND {_type(cond.field)} = '{str(flag).lower()}')")
    return ("(" + " OR ".join(parts) + ")" if parts else "0"), params


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "other"
    return "str" if isinstance(value, str) else "num"


def _order_sql(field: str, descending: bool) -> str:
    """Order like MongoDB's BSON type order: null/missing, numbers, strings, objects, arrays,
    booleans, dates; then by value; `_id` breaks ties so pages are stable."""
    direction = "DESC" if descending else "ASC"
    if field == "_id":
        return f"_id {direction}"
    path = f"$.{field}"
    rank = (
        f"CASE json_type(doc, '{path}') WHEN 'integer' THEN 1 WHEN 'real' THEN 1 WHEN 'text' THEN 2 "
        f"WHEN 'object' THEN CASE WHEN json_type(doc, '{path}.\"$date\"') = 'text' THEN 6 ELSE 3 END "
        f"WHEN 'array' THEN 4 WHEN 'true' THEN 5 WHEN 'false' THEN 5 ELSE 0 END"
    )
    return f"{rank} {direction}, json_extract(doc, '{path}') {direction}, _id ASC"


def _where(filter: Filter | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for cond in parse_filter(filter):
        sql, values = _condition_sql(cond)
        clauses.append(sql)
        params.extend(values)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        if part not in node:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {path!r}: {part!r} is not a sub-document")
    node[leaf] = value


def _apply_fields(conn: sqlite3.Connection, collection: str, key: str,
                  changes: Mapping[str, Any]) -> Document | None:
    """Read-modify-write of one document inside the caller's write transaction: `changes`
    (dotted paths) set, one UPDATE; None when there is no such document."""
    row = conn.execute(f'SELECT doc FROM "{collection}" WHERE _id = ?', (key,)).fetchone()
    if row is None:
        return None
    body = json.loads(row[0], object_hook=_hook)
    for path, value in changes.items():
        _set_path(body, path, value)
    text = _dumps(body)
    conn.execute(f'UPDATE "{collection}" SET doc = ? WHERE _id = ?', (text, key))
    return _document(key, text)


# --- group commit --------------------------------------------------------------------------

class _Write(GroupJob):
    """One queued write: `fn(conn)` runs inside its group's transaction (one writing statement,
    see the module docstring)."""

    __slots__ = ("collection", "fn")

    def __init__(self, collection: str, fn: Callable[[sqlite3.Connection], Any]) -> None:
        super().__init__()
        self.collection = collection
        self.fn = fn


# --- the store -------------------------------------------------------------------------------

class EmbeddedStore(Store):
    """SQLite-backed Store; see the module docstring for the why of each choice."""

    def __init__(self, path: str | Path, *, limiter_size: int = 1):
        if limiter_size < 1:
            raise ValueError("limiter_size must be at least 1")
        self.path = Path(path)
        self._size = limiter_size
        self._limiter = trio.CapacityLimiter(limiter_size)
        self._idle: list[sqlite3.Connection] = []
        self._tables: set[str] = set()
        self._is_open = False
        self._groups = WriteGroups(self._commit_group, _MAX_GROUP)  # the group commit

    # lifecycle

    async def open(self) -> None:
        if self._is_open:
            return
        try:
            self._idle = await trio.to_thread.run_sync(self._connect_all)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open {self.path}: {exc}") from exc
        self._is_open = True

    def _connect_all(self) -> list[sqlite3.Connection]:
        conns: list[sqlite3.Connection] = []
        try:
            for _ in range(self._size):
                conn = sqlite3.connect(
                    self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
                )
                conns.append(conn)
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("SELECT 1").fetchone()
        except BaseException:
            for conn in conns:
                conn.close()
            raise
        return conns

    async def close(self) -> None:
        self._is_open = False
        idle, self._idle = self._idle, []
        await trio.to_thread.run_sync(lambda: [c.close() for c in idle])

    async def ping(self) -> bool:
        with trio.move_on_after(_PING_TIMEOUT_S):
            try:
                await self._call(None, lambda conn: conn.execute("SELECT 1").fetchone())
                return True
            except (Unavailable, sqlite3.Error):
                return False
        return False

    async def _call(self, collection: str | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in a worker thread on a connection it holds alone; map sqlite errors."""
        if not self._is_open:
            raise Unavailable("embedded store is not open")
        await self._acquire()
        try:
            conn = self._idle.pop()
            try:
                return await in_worker(self._in_thread, conn, collection, fn)
            except sqlite3.IntegrityError as exc:
                raise self._conflict(collection or "?", exc) from exc
            except (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError):
                raise  # our bug, not the database's: let it surface as such
            except sqlite3.DatabaseError as exc:  # locked, I/O error, disk full, corrupt file
                raise Unavailable(f"sqlite: {exc}") from exc
            finally:
                if self._is_open:
                    self._idle.append(conn)
                else:  # closed while we were running: nobody else will close it
                    conn.close()
        finally:
            self._limiter.release()

    async def _acquire(self) -> None:
        """A connection's slot of the limiter: at once when one is free (no pass of the
        scheduler: the thread call that follows is the wait), else waiting (cancellable)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            await self._limiter.acquire()

    def _in_thread(self, conn: sqlite3.Connection, collection: str | None, fn: Callable[[sqlite3.Connection], T]) -> T:
        if collection is not None and collection not in self._tables:
            conn.execute(f'CREATE TABLE IF NOT EXISTS "{collection}" (_id TEXT PRIMARY KEY, doc TEXT NOT NULL)')
            self._tables.add(collection)
        return fn(conn)

    async def _write(self, collection: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in the next group commit and answer its result once that group's
        COMMIT is on disk (see the module docstring: group commit, cancellation)."""
        if not self._is_open:
            raise Unavailable("embedded store is not open")
        return await self._groups.submit(_Write(collection, fn))

    async def _commit_group(self, take: Callable[..., list[_Write]]) -> None:
        """One group of `WriteGroups`: a connection, then every write queued, in one transaction."""
        await self._acquire()  # cancellable: nothing is taken yet
        try:
            if not self._is_open:
                for job in take(everything=True):
                    job.error, job.done = Unavailable("embedded store is not open"), True
                return
            group = take()
            conn = self._idle.pop()
            try:
                await in_worker(self._run_group, conn, group)  # not cancellable
            except BaseException as exc:  # the thread never ran (_run_group answers every job)
                for job in group:
                    if not job.done:
                        job.value, job.error, job.done = None, exc, True
            finally:
                if self._is_open:
                    self._idle.append(conn)
                else:
                    conn.close()
        finally:
            self._limiter.release()

    def _run_group(self, conn: sqlite3.Connection, group: list[_Write]) -> None:
        """In the worker thread: the group's writes in one transaction; each job gets its
        result or its own error; a failure of the transaction fails every job."""
        try:
            for collection in {job.collection for job in group} - self._tables:
                conn.execute(f'CREATE TABLE IF NOT EXISTS "{collection}" (_id TEXT PRIMARY KEY, doc TEXT NOT NULL)')
                self._tables.add(collection)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for job in group:
                    try:
                        job.value = job.fn(conn)
                    except sqlite3.IntegrityError as exc:
                        job.error = self._conflict(job.collection, exc)
                    except (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError) as exc:
                        job.error = exc  # our bug, not the database's: that write surfaces it
                    except sqlite3.DatabaseError:
                        raise  # locked, I/O error, disk full: the whole transaction is suspect
                    except Exception as exc:  # a value that cannot be stored, a bad path...
                        job.error = exc
                    if not conn.in_transaction:  # SQLite rolled the whole transaction back
                        raise sqlite3.OperationalError("the transaction was rolled back")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            for job in group:
                if not isinstance(job.error, Conflict):
                    job.value, job.error = None, Unavailable(f"sqlite: {exc}")
        except BaseException as exc:  # (an interpreter error) none of the writes was committed
            for job in group:
                job.value, job.error = None, exc
        finally:
            for job in group:
                job.done = True

    @staticmethod
    def _conflict(collection: str, exc: sqlite3.IntegrityError) -> Conflict:
        # "UNIQUE constraint failed: index 'region__name'" or "... failed: region._id"
        message = str(exc)
        prefix = f"index '{collection}__"
        if prefix in message:
            return Conflict(collection, message.split(prefix, 1)[1].rstrip("'"), message)
        return Conflict(collection, "_id_", message)

    # indexes

    async def ensure_indexes(self, collection: str, indexes: Iterable[Index]) -> None:
        check_collection(collection)
        statements = []
        for ix in map(check_index, indexes):
            columns = ", ".join(_key(f) for f in ix.fields)
            unique = "UNIQUE " if ix.unique else ""
            statements.append(
                f'CREATE {unique}INDEX IF NOT EXISTS "{collection}__{ix.name}" ON "{collection}" ({columns})'
            )

        def run(conn: sqlite3.Connection) -> None:
            for sql in statements:
                conn.execute(sql)

        await self._call(collection, run)

    # reads

    async def get(self, collection: str, doc_id: str) -> Document:
        check_collection(collection)
        if not is_valid_id(doc_id):
            raise NotFound(collection, str(doc_id))
        key = _canonical_id(doc_id)

        def run(conn: sqlite3.Connection) -> Document | None:
            row = conn.execute(f'SELECT doc FROM "{collection}" WHERE _id = ?', (key,)).fetchone()
            return None if row is None else _document(key, row[0])

        doc = await self._call(collection, run)
        if doc is None:
            raise NotFound(collection, doc_id)
        return doc

    async def find(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: str | None = None,
        limit: int | None = None,
    ) -> list[Document]:
        check_collection(collection)
        where, params = _where(filter)
        order = parse_sort(sort)
        sql = f'SELECT _id, doc FROM "{collection}"{where}'
        sql += f" ORDER BY {_order_sql(*order)}" if order else " ORDER BY rowid"
        if check_limit(limit) is not None:
            sql += " LIMIT ?"
            params.append(limit)

        def run(conn: sqlite3.Connection) -> list[Document]:
            return [_document(i, text) for i, text in conn.execute(sql, params)]

        return await self._call(collection, run)

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        check_collection(collection)
        where, params = _where(filter)
        sql = f'SELECT count(*) FROM "{collection}"{where}'
        return await self._call(collection, lambda conn: conn.execute(sql, params).fetchone()[0])

    # writes: each is one autocommit statement (its own transaction) unless stated otherwise

    async def insert(self, collection: str, doc: Document) -> Document:
        check_collection(collection)
        doc_id = doc.get("_id") or new_id()
        if not is_valid_id(doc_id):
            raise ValueError(f"_id must be a 24-hex ObjectId string, not {doc_id!r}")
        doc_id = _canonical_id(doc_id)
        body = {k: v for k, v in doc.items() if k != "_id"}

        def run(conn: sqlite3.Connection) -> Document:
            text = _dumps(body)
            conn.execute(f'INSERT INTO "{collection}" (_id, doc) VALUES (?, ?)', (doc_id, text))
            return _document(doc_id, text)

        return await self._write(collection, run)

    async def replace(self, collection: str, doc: Document) -> Document:
        check_collection(collection)
        if "_id" not in doc:
            raise ValueError("replace needs the document's _id")
        if not is_valid_id(doc["_id"]):
            raise NotFound(collection, str(doc["_id"]))
        doc_id = _canonical_id(doc["_id"])
        body = {k: v for k, v in doc.items() if k != "_id"}

        def run(conn: sqlite3.Connection) -> Document | None:
            text = _dumps(body)
            cur = conn.execute(f'UPDATE "{collection}" SET doc = ? WHERE _id = ?', (text, doc_id))
            return _document(doc_id, text) if cur.rowcount else None

        result = await self._write(collection, run)
        if result is None:
            raise NotFound(collection, doc_id)
        return result

    async def update_fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> Document:
        check_collection(collection)
        check_update(fields)
        if not is_valid_id(doc_id):
            raise NotFound(collection, str(doc_id))
        key = _canonical_id(doc_id)
        changes = dict(fields)

        def run(conn: sqlite3.Connection) -> Document | None:
            # inside its group's BEGIN IMMEDIATE transaction: the write lock is held from the
            # start, so no other writer can slip in between our read and our (one) write
            return _apply_fields(conn, collection, key, changes)

        result = await self._write(collection, run)
        if result is None:
            raise NotFound(collection, doc_id)
        return result

    async def update_fields_many(self, collection: str,
                                 changes: Mapping[str, Mapping[str, Any]]) -> dict[str, Document]:
        """All of `changes` in one IMMEDIATE transaction: one commit (one WAL sync) for the lot,
        answered only after it (see `update_fields`); a change that cannot be applied (ValueError)
        rolls the lot back."""
        check_collection(collection)
        todo: list[tuple[str, str, dict[str, Any]]] = []
        for doc_id, fields in changes.items():
            check_update(fields)
            if is_valid_id(doc_id):
                todo.append((doc_id, _canonical_id(doc_id), dict(fields)))
        if not todo:
            return {}

        def run(conn: sqlite3.Connection) -> dict[str, Document]:
            out: dict[str, Document] = {}
            conn.execute("BEGIN IMMEDIATE")
            try:
                for given, key, fields in todo:
                    doc = _apply_fields(conn, collection, key, fields)
                    if doc is not None:
                        out[given] = doc
                conn.execute("COMMIT")
                return out
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return await self._call(collection, run)

    async def delete(self, collection: str, doc_id: str) -> None:
        check_collection(collection)
        if not is_valid_id(doc_id):
            raise NotFound(collection, str(doc_id))
        key = _canonical_id(doc_id)

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(f'DELETE FROM "{collection}" WHERE _id = ?', (key,)).rowcount

        if not await self._write(collection, run):
            raise NotFound(collection, doc_id)
