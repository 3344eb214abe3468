"""Build the configured Store: the one place that chooses a backend.

`open_store(...)` is an async context manager, so the store is closed however the server's root
nursery ends:

    async with open_store(db_uri=cfg.db_uri, db_name=cfg.db_name, data_dir=cfg.data_dir,
                          cache_enabled=True, cache_max_entries=10_000,
                          cache_ttl_seconds=30) as store:
        ...

`build_store(...)` takes the same arguments and returns the store *unopened*, for callers that
manage the lifecycle themselves (one-shot CLI commands, tests).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import trio

from .base import Store
from .cache import CachedStore
from .embedded import EmbeddedStore
from .mongo import MongoStore
from .observed import ObservedStore

EMBEDDED_FILE = "kahuna.sqlite3"


def build_store(
    *,
    db_uri: str | None,
    db_name: str,
    data_dir: Path,
    cache_enabled: bool,
    cache_max_entries: int,
    cache_ttl_seconds: float,
    observed: bool = False,
) -> Store:
    """MongoDB when `db_uri` is set, else SQLite at `data_dir/kahuna.sqlite3` (the no-server
    default); wrapped in a CachedStore when enabled. Creates `data_dir` (0700: it holds every
    secret hash we keep) when missing. Does not open the store. `observed`: the backend is
    wrapped in an ObservedStore (operation latencies, write listeners: the server's metrics)."""
    store: Store
    if db_uri:
        store = MongoStore(db_uri, db_name)
    else:
        data_dir = Path(data_dir)
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700, parents=True)
            os.chmod(data_dir, 0o700)  # mkdir's mode is filtered by the umask
        store = EmbeddedStore(data_dir / EMBEDDED_FILE)
    if observed:
        store = ObservedStore(store)
    if cache_enabled:
        store = CachedStore(store, max_entries=cache_max_entries, ttl_seconds=cache_ttl_seconds)
    return store


@asynccontextmanager
async def open_store(
    *,
    db_uri: str | None,
    db_name: str,
    data_dir: Path,
    cache_enabled: bool,
    cache_max_entries: int,
    cache_ttl_seconds: float,
    observed: bool = False,
) -> AsyncIterator[Store]:
    """`build_store(...)`, opened (Unavailable if it cannot be), and closed on exit."""
    store = build_store(
        db_uri=db_uri,
        db_name=db_name,
        data_dir=data_dir,
        cache_enabled=cache_enabled,
        cache_max_entries=cache_max_entries,
        cache_ttl_seconds=cache_ttl_seconds,
        observed=observed,
    )
    await store.open()
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):  # close even when the nursery is being cancelled
            await store.close()
