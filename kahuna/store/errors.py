"""Errors every store backend raises, whatever the database underneath.

The API layer maps them to HTTP answers (NotFound -> 404, Conflict -> 409, Unavailable -> 503);
nothing below the API builds a response.
"""


class StoreError(Exception):
    """Base of every store failure."""


class NotFound(StoreError):
    def __init__(self, collection: str, doc_id: str):
        super().__init__(f"{collection} {doc_id} not found")
        self.collection = collection
        self.doc_id = doc_id


class Conflict(StoreError):
    """A write would break a unique index (or the id already exists)."""

    def __init__(self, collection: str, index: str, detail: str = ""):
        super().__init__(f"{collection}: unique constraint {index} violated{': ' + detail if detail else ''}")
        self.collection = collection
        self.index = index
        self.detail = detail


class Unavailable(StoreError):
    """The database cannot be reached (or answered with a server-side failure)."""
