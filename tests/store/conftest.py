"""Fixtures for the store contract: every backend, bare and behind the cache.

The mongo variants talk over real TCP to one nx-27017 server per test session (started by
tests/nx_server.py); each test gets its own database name, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import pytest

from kahuna.store.base import Store
from kahuna.store.cache import CachedStore
from kahuna.store.embedded import EmbeddedStore
from kahuna.store.mongo import MongoStore
from tests.nx_server import NxServer, nx_server

BACKENDS = ["embedded", "mongo", "embedded+cache", "mongo+cache"]


@pytest.fixture(scope="session")
def nx() -> NxServer:
    with nx_server() as server:
        yield server


def _backend_factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """A function building a fresh (unopened) bare store over one per-test database."""
    if kind == "embedded":
        return lambda: EmbeddedStore(tmp_path / "store.sqlite3")
    server: NxServer = request.getfixturevalue("nx")
    db_name = f"t_{uuid.uuid4().hex[:16]}"
    return lambda: MongoStore(server.uri, db_name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    kind, _, cached = backend.partition("+")
    bare = _backend_factory(kind, request, tmp_path)
    if cached:
        return lambda: CachedStore(bare(), max_entries=1000, ttl_seconds=60)
    return bare


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> Store:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["embedded", "mongo"])
async def cached(request: pytest.FixtureRequest, tmp_path: Path) -> CachedStore:
    """A CachedStore whose `.inner` the test may write to behind the cache's back."""
    inner = _backend_factory(request.param, request, tmp_path)()
    c = CachedStore(inner, max_entries=1000, ttl_seconds=60)
    await c.open()
    try:
        yield c
    finally:
        await c.close()
