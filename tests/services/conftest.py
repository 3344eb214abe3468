"""Fixtures of the services tests: one real Kahuna per module (embedded store, mail to a sink so
that users can be confirmed, a short agent call timeout) and simulated agents as processes."""

from __future__ import annotations

import pytest

from tests.infra.conftest import sims  # noqa: F401  (simulated agents as processes, stopped at module end)
from tests.infra.helpers import tenant_kahuna


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    # no document cache: tests.services.helpers.give_private_subnet writes into the store
    with tenant_kahuna(tmp_path_factory, smtp_sink, "services") as k:
        yield k


