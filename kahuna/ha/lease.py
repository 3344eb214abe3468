"""The lease document on MongoDB: one compare-and-set per take or renewal.

Why a pymongo client of its own rather than the Store: the lease needs a conditional update
(the Store interface has none, on purpose) and a deadline per call that is shorter than the fence
margin (the Store's server selection waits 5 s). Only `update_one` with a filter and `insert_one`
are used: nx-27017 and a real MongoDB both do those right (no `$setOnInsert`, no
`find_one_and_update`).

The document: `{_id: "kahuna", holder: {node, host, pid}, epoch, renewals}`. `epoch` grows by one
at every change of holder; `renewals` counts the holder's renewals within its epoch. Both are
the compare-and-set key, so two nodes can never both succeed from the same observation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

COLLECTION = "ha_lease"
LEASE_ID = "kahuna"


class LeaseUnavailable(Exception):
    """The store did not answer within the call's deadline."""


@dataclass(frozen=True)
class Observed:
    """The lease as read: `None` holder when no document exists yet."""

    holder: dict[str, Any] | None
    epoch: int
    renewals: int

    @property
    def key(self) -> tuple[int, int]:
        return self.epoch, self.renewals


class LeaseStore:
    """Blocking calls (run them in a worker thread); each bounded by `timeout` seconds."""

    def __init__(self, uri: str, db_name: str, timeout: float) -> None:
        self.timeout = timeout
        ms = int(timeout * 1000)
        self._client: MongoClient = MongoClient(
            uri, w="majority", appname="kahuna-lease", serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms, socketTimeoutMS=ms, retryWrites=False, retryReads=False)
        self._coll = self._client.get_database(db_name).get_collection(COLLECTION)

    def close(self) -> None:
        self._client.close()

    def read(self) -> Observed:
        try:
            with pymongo.timeout(self.timeout):
                doc = self._coll.find_one({"_id": LEASE_ID})
        except PyMongoError as exc:
            raise LeaseUnavailable(str(exc)) from exc
        if doc is None:
            return Observed(None, 0, 0)
        return Observed(doc.get("holder"), int(doc.get("epoch", 0)), int(doc.get("renewals", 0)))

    def take(self, seen: Observed, holder: dict[str, Any]) -> bool:
        """Become the holder at epoch seen.epoch + 1, if the lease is still exactly `seen`."""
        try:
            with pymongo.timeout(self.timeout):
                if seen.holder is None and seen.epoch == 0:
                    try:
                        self._coll.insert_one({"_id": LEASE_ID, "holder": holder, "epoch": 1, "renewals": 0})
                        return True
                    except DuplicateKeyError:
                        return False
                result = self._coll.update_one(
                    {"_id": LEASE_ID, "epoch": seen.epoch, "renewals": seen.renewals},
                    {"$set": {"holder": holder, "epoch": seen.epoch + 1, "renewals": 0}})
                return result.matched_count == 1
        except PyMongoError as exc:
            raise LeaseUnavailable(str(exc)) from exc

    def renew(self, epoch: int, renewals: int) -> bool:
        """Count one renewal, if nobody moved the lease since our last one."""
        try:
            with pymongo.timeout(self.timeout):
                result = self._coll.update_one(
                    {"_id": LEASE_ID, "epoch": epoch, "renewals": renewals},
                    {"$set": {"renewals": renewals + 1}})
                return result.matched_count == 1
        except PyMongoError as exc:
            raise LeaseUnavailable(str(exc)) from exc
