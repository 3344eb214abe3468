"""Fixtures of the identity tests: one Kahuna per module with mail pointed at the SMTP sink
(tests/conftest.py), and the official client with the master key."""

from __future__ import annotations

import pytest

from tests.conftest import make_client
from tests.identity.helpers import identity_config
from tests.kahuna_proc import Kahuna


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    work = tmp_path_factory.mktemp("identity")
    with Kahuna(work, identity_config(work, smtp_sink)) as k:
        yield k


@pytest.fixture(scope="module")
def admin(kahuna):
    with make_client(kahuna) as client:
        yield client
