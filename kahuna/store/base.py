"""The narrow store interface every backend implements (design.md, Persistence).

Documents are plain dicts. `_id` is the 24-hex string form of an ObjectId at this interface
(backends convert it to whatever they keep); references to other documents (`region_id`, ...) are
24-hex strings too. Every method is async and never blocks the trio loop: backends run their
blocking driver in `trio.to_thread.run_sync` under a `CapacityLimiter`.

Filters are deliberately tiny, so that the embedded and the mongo backends mean the same thing:
`{field: value}` is equality (a dotted field reaches into a sub-document) and
`{field: {"$in": [v, ...]}}` is membership. Anything else raises ValueError.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from bson import ObjectId

Document = dict[str, Any]
Filter = Mapping[str, Any]


@dataclass(frozen=True)
class Index:
    """An index on one collection. Names are explicit: both backends use them as given."""

    name: str
    fields: tuple[str, ...]
    unique: bool = False


def new_id() -> str:
    """A fresh ObjectId in its 24-hex API form."""
    return str(ObjectId())


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 24 and ObjectId.is_valid(value)


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
