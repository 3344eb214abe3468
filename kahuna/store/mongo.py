"""The MongoDB backend: blocking pymongo in worker threads, under a trio CapacityLimiter.

Why threads: pymongo's AsyncMongoClient needs asyncio and does not run under trio, and a blocking
call on the trio thread would stall every agent session. The limiter bounds how many threads (and
pooled connections) a burst of requests can tie up.

Choices forced by the contract and by what both real MongoDB and nx-27017 (the test server) get
right (reference/stack-and-peers.md):
- `_id` is an ObjectId in the database and 24-hex at the interface; converted both ways, including
  inside `$in` filters on `_id`.
- Write concern majority (a production replica set must not lose an acknowledged write on
  failover); `tz_aware` with `tzinfo=UTC` so datetimes come back as aware UTC, like the embedded
  backend's.
- `update_fields` is `update_one` + a read back, never `find_one_and_update` (nx-27017 silently
  drops a write that breaks a unique index there instead of raising DuplicateKeyError). No
  `$setOnInsert`, no transactions. nx-27017's SQL fast path for `$set` stores a bare bool as 1/0
  and a bare datetime as a string; when such a value is set we add a `$pull` of a field that does
  not exist: a no-op for MongoDB, and it sends nx-27017 down its correct (Python) update path.
- Every equality is spelled `{"$in": [...], "$type": <type of the values>}`: nx-27017 matches
  `True` with `1` and a string with a value *inside* a sub-document, and its find and count
  disagree on such filters. For scalar fields this is exactly MongoDB's own meaning, so real
  MongoDB only pays a cheap extra check (and still uses the index). Null equality is spelled
  `{"$in": [None]}`: same meaning in MongoDB, and nx-27017 miscounts plain `{"f": None}`.
- Index names are explicit, but nx-27017 renames indexes (`idx_<coll>_<fields>`), so a
  DuplicateKeyError is mapped back to our index name by key pattern, then by either spelling.
- Inserts into one collection are sent in groups: an insert that finds none of that collection
  in flight sends every insert queued for it so far as one `insert_many(ordered=False)` (one
  alone: `insert_one`, as before); inserts arriving meanwhile wait for the next group. Each
  caller is answered from its own document's result: `ordered=False` attempts every document,
  and a unique-index conflict comes back as that document's write error (409 for that insert
  only); a write-concern error or a failure of the call fails the whole group. Why: a create
  spent ~160 µs of CPU in pymongo's insert_one alone, ~19 µs per document in groups of 16
  (measured against nx-27017), and the server gets one command instead of sixteen.
  Cancellation as in the embedded store: a queued insert leaves the queue; one whose group is
  being sent is waited for and answered.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Iterable, Mapping, TypeVar

import bson
import pymongo
import trio
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.errors import InvalidDocument
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

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
    parse_filter,
    parse_sort,
)
from .errors import Conflict, NotFound, Unavailable

T = TypeVar("T")

_CODEC = CodecOptions(tz_aware=True, tzinfo=timezone.utc)
_PING_TIMEOUT_S = 2.0
_PATH_NOT_VIABLE = 28
# A field no document has. `$pull` on a missing field is a no-op in MongoDB (ModifierNode::apply:
# "modifiers like $pop or $pull ... have no effect when applied to a path that does not exist"),
# but it makes nx-27017 apply the update in Python instead of SQL, where `$set` of a bare bool or
# datetime would be stored as 1/0 or as a string (see update_fields).
_NX_TYPED_SET = "_kahuna_no_such_field"


def _to_db(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    if "_id" in out:
        out["_id"] = ObjectId(out["_id"])
    return out


def _from_db(doc: Mapping[str, Any]) -> Document:
    out = dict(doc)
    if isinstance(out.get("_id"), ObjectId):
        out["_id"] = str(out["_id"])
    return out


def _as_stored(doc: Mapping[str, Any]) -> Document:
    """What a later `get` will answer for `doc` (BSON keeps milliseconds, UTC): a BSON round trip.
    Also refuses, before any I/O, what BSON cannot hold (TypeError, as the embedded backend)."""
    try:
        return _from_db(bson.decode(bson.encode(_to_db(doc)), codec_options=_CODEC))
    except InvalidDocument as exc:
        raise TypeError(str(exc)) from exc


def _clause(cond: Condition) -> dict[str, Any]:
    field, values = cond.field, list(cond.values)
    if field == "_id":
        values = [ObjectId(v) if is_valid_id(v) else v for v in values]
        return {field: {"$in": values} if cond.is_in else values[0]}
    groups: list[dict[str, Any]] = []
    for bson_type, wanted in (
        ("string", [v for v in values if isinstance(v, str)]),
        ("number", [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]),
        ("bool", [v for v in values if isinstance(v, bool)]),
    ):
        if wanted:
            groups.append({"$in": wanted, "$type": bson_type})
    if None in values or not groups:
        groups.append({"$in": [None] if None in values else []})
    if len(groups) == 1:
        return {field: groups[0]}
    return {"$or": [{field: g} for g in groups]}


def _query(filter: Filter | None) -> dict[str, Any]:
    clauses = [_clause(c) for c in parse_filter(filter)]
    if not clauses:
        return {}
    if len(clauses) == 1:
        return clauses[0]
    return {"$and": clauses}


_MAX_GROUP = 256  # documents per insert_many


class _Insert(GroupJob):
    """One queued insert (its document as sent)."""

    __slots__ = ("doc",)

    def __init__(self, doc: dict[str, Any]) -> None:
        super().__init__()
        self.doc = doc


class MongoStore(Store):
    """pymongo-backed Store; see the module docstring for the why of each choice."""

    def __init__(
        self,
        uri: str,
        db_name: str,
        *,
        limiter_size: int = 16,
        server_selection_timeout_ms: int = 5000,
    ):
        self.uri = uri
        self.db_name = db_name
        self._limiter = trio.CapacityLimiter(limiter_size)
        self._timeout_ms = server_selection_timeout_ms
        self._client: MongoClient | None = None
        self._db: Any = None
        # index fields per collection, to name a DuplicateKeyError's index (see _conflict)
        self._indexes: dict[str, list[Index]] = {}
        self._inserts: dict[str, WriteGroups] = {}  # per collection: its inserts' groups

    # lifecycle

    async def open(self) -> None:
        if self._client is not None:
            return

        def connect() -> MongoClient:
            client: MongoClient = MongoClient(
                self.uri,
                tz_aware=True,
                tzinfo=timezone.utc,
                w="majority",
                serverSelectionTimeoutMS=self._timeout_ms,
                appname="kahuna",
            )
            try:
                client.admin.command("ping")
            except BaseException:
                client.close()
                raise
            return client

        try:
            client = await trio.to_thread.run_sync(connect, limiter=self._limiter)
        except PyMongoError as exc:
            raise Unavailable(f"cannot reach MongoDB: {exc}") from exc
        self._client = client
        self._db = client.get_database(self.db_name, codec_options=_CODEC)

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            await trio.to_thread.run_sync(client.close)

    async def ping(self) -> bool:
        if self._client is None:
            return False
        client = self._client

        def run() -> None:
            # A bounded wait: /healthz must answer even while the server is gone.
            with pymongo.timeout(min(_PING_TIMEOUT_S, self._timeout_ms / 1000)):
                client.admin.command("ping")

        with trio.move_on_after(_PING_TIMEOUT_S + 1):  # + the wait for a free worker
            try:
                await trio.to_thread.run_sync(run, limiter=self._limiter)
                return True
            except Exception:
                return False
        return False

    async def _call(self, collection: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(collection_handle)` in a worker thread; map driver errors to store errors."""
        if self._db is None:
            raise Unavailable("mongo store is not open")
        handle = self._db.get_collection(collection)
        try:
            return await trio.to_thread.run_sync(fn, handle, limiter=self._limiter)
        except DuplicateKeyError as exc:
            raise self._conflict(collection, exc.details or {}) from exc
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or [{}]
            if errors[0].get("code") == 11000:
                raise self._conflict(collection, errors[0]) from exc
            raise Unavailable(f"mongo: {exc}") from exc
        except OperationFailure as exc:
            if exc.code == _PATH_NOT_VIABLE:  # $set "a.b" where "a" is not a sub-document
                raise ValueError(str(exc)) from exc
            raise Unavailable(f"mongo: {exc}") from exc
        except PyMongoError as exc:  # unreachable, timed out, or a server-side failure
            raise Unavailable(f"mongo: {exc}") from exc

    def _conflict(self, collection: str, details: Mapping[str, Any]) -> Conflict:
        message = str(details.get("errmsg", ""))
        tokens = set(re.findall(r"[\w.$-]+", message))
        pattern = tuple(details.get("keyPattern") or ())
        for ix in self._indexes.get(collection, []):
            nx_name = f"idx_{collection}_{'_'.join(ix.fields)}"  # nx-27017 ignores our names
            if pattern == ix.fields or ix.name in tokens or nx_name in tokens:
                return Conflict(collection, ix.name, message)
        if pattern == ("_id",) or "_id_" in tokens or f"{collection}._id" in tokens:
            return Conflict(collection, "_id_", message)
        named = re.search(r"index[:\s]+'?([\w.$-]+)", message)
        return Conflict(collection, named.group(1) if named else "unknown", message)

    # indexes

    async def ensure_indexes(self, collection: str, indexes: Iterable[Index]) -> None:
        check_collection(collection)
        wanted = [check_index(ix) for ix in indexes]
        models = [
            pymongo.IndexModel([(f, pymongo.ASCENDING) for f in ix.fields], name=ix.name, unique=ix.unique)
            for ix in wanted
        ]
        known = self._indexes.setdefault(collection, [])
        known.extend(ix for ix in wanted if ix not in known)
        if models:
            await self._call(collection, lambda c: c.create_indexes(models))

    # reads

    async def get(self, collection: str, doc_id: str) -> Document:
        check_collection(collection)
        if not is_valid_id(doc_id):
            raise NotFound(collection, str(doc_id))
        found = await self._call(collection, lambda c: c.find_one({"_id": ObjectId(doc_id)}))
        if found is None:
            raise NotFound(collection, doc_id)
        return _from_db(found)

    async def find(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: str | None = None,
        limit: int | None = None,
    ) -> list[Document]:
        check_collection(collection)
        query = _query(filter)
        order = parse_sort(sort)
        check_limit(limit)

        def run(c: Any) -> list[Document]:
            cursor = c.find(query)
            if order:
                field, descending = order
                keys = [(field, pymongo.DESCENDING if descending else pymongo.ASCENDING)]
                cursor = cursor.sort(keys + ([("_id", pymongo.ASCENDING)] if field != "_id" else []))
            if limit is not None:
                cursor = cursor.limit(limit)
            return [_from_db(d) for d in cursor]

        return await self._call(collection, run)

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        check_collection(collection)
        query = _query(filter)
        return await self._call(collection, lambda c: c.count_documents(query))

    # writes

    async def insert(self, collection: str, doc: Document) -> Document:
        check_collection(collection)
        doc = dict(doc)
        if not doc.get("_id"):
            doc["_id"] = str(ObjectId())
        elif not is_valid_id(doc["_id"]):
            raise ValueError(f"_id must be a 24-hex ObjectId string, not {doc['_id']!r}")
        stored = _as_stored(doc)  # also rejects what BSON cannot hold, before any I/O
        await self._insert_grouped(collection, _to_db(doc))
        return stored

    async def _insert_grouped(self, collection: str, doc: dict[str, Any]) -> None:
        """Send `doc` with the next group of inserts into `collection` (module docstring)."""
        if self._db is None:
            raise Unavailable("mongo store is not open")
        groups = self._inserts.get(collection)
        if groups is None:
            groups = self._inserts[collection] = WriteGroups(partial(self._send_group, collection), _MAX_GROUP)
        await groups.submit(_Insert(doc))

    async def _send_group(self, collection: str, take: Callable[..., list[_Insert]]) -> None:
        """One group of `WriteGroups`: every insert queued for `collection`, in one command."""
        await self._limiter.acquire()  # cancellable: nothing is taken yet
        try:
            group = take()
            db = self._db
            errors: list[BaseException | None]
            if db is None:
                errors = [Unavailable("mongo store is not open") for _ in group]
            else:
                try:
                    errors = await in_worker(self._insert_docs, db.get_collection(collection), collection,
                                             [j.doc for j in group])
                except BaseException as exc:  # not the driver's (that is mapped per document)
                    errors = [exc] * len(group)
            for job, error in zip(group, errors):
                job.error, job.done = error, True
        finally:
            self._limiter.release()

    def _insert_docs(self, handle: Any, collection: str, docs: list[dict[str, Any]]) -> list[BaseException | None]:
        """In a worker thread: insert the documents, answer each one's error (None: inserted)."""
        try:
            if len(docs) == 1:
                handle.insert_one(docs[0])
            else:
                handle.insert_many(docs, ordered=False)
            return [None] * len(docs)
        except DuplicateKeyError as exc:
            return [self._conflict(collection, exc.details or {})]
        except BulkWriteError as exc:
            details = exc.details or {}
            if details.get("writeConcernErrors"):  # not known to be durable: none acknowledged
                return [Unavailable(f"mongo: {exc}") for _ in docs]
            errors: list[BaseException | None] = [None] * len(docs)
            for error in details.get("writeErrors") or []:
                index = error.get("index")
                if not isinstance(index, int) or not 0 <= index < len(docs):
                    return [Unavailable(f"mongo: {exc}") for _ in docs]
                errors[index] = (self._conflict(collection, error) if error.get("code") == 11000
                                 else Unavailable(f"mongo: {error.get('errmsg', exc)}"))
            return errors
        except OperationFailure as exc:
            return [Unavailable(f"mongo: {exc}") for _ in docs]
        except PyMongoError as exc:  # unreachable, timed out, or a server-side failure
            return [Unavailable(f"mongo: {exc}") for _ in docs]

    async def replace(self, collection: str, doc: Document) -> Document:
        check_collection(collection)
        if "_id" not in doc:
            raise ValueError("replace needs the document's _id")
        if not is_valid_id(doc["_id"]):
            raise NotFound(collection, str(doc["_id"]))
        stored = _as_stored(doc)
        body = {k: v for k, v in _to_db(doc).items() if k != "_id"}
        oid = ObjectId(doc["_id"])
        result = await self._call(collection, lambda c: c.replace_one({"_id": oid}, body))
        if not result.matched_count:
            raise NotFound(collection, doc["_id"])
        return stored

    async def update_fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> Document:
        check_collection(collection)
        check_update(fields)
        if not is_valid_id(doc_id):
            raise NotFound(collection, str(doc_id))
        oid = ObjectId(doc_id)
        changes = dict(fields)
        _as_stored(changes)

        update: dict[str, Any] = {"$set": changes}
        if any(isinstance(v, (bool, datetime)) for v in changes.values()):
            update["$pull"] = {_NX_TYPED_SET: None}

        def run(c: Any) -> dict[str, Any] | None:
            if changes and not c.update_one({"_id": oid}, update).matched_count:
                return None
            return c.find_one({"_id": oid})

        found = await self._call(collection, run)
        if found is None:
            raise NotFound(collection, doc_id)
        return _from_db(found)

    async def delete(self, collection: str, doc_id: str) -> None:
        check_collection(collection)
        if not is_valid_id(doc_id):
            raise NotFound(collection, str(doc_id))
        oid = ObjectId(doc_id)
        result = await self._call(collection, lambda c: c.delete_one({"_id": oid}))
        if not result.deleted_count:
            raise NotFound(collection, doc_id)
