"""Fixtures of the services tests: one real Kahuna per module (embedded store, mail to a sink so
that users can be confirmed, a short agent call timeout) and simulated agents as processes."""

from __future__ import annotations

import pytest

from tests.conftest import make_client
from tests.infra.helpers import SimAgent, tenant_kahuna


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory, smtp_sink):
    # no document cache: tests.services.helpers.give_private_subnet writes into the store
    with tenant_kahuna(tmp_path_factory, smtp_sink, "services") as k:
        yield k


@pytest.fixture(scope="module")
def admin(kahuna):
    with make_client(kahuna) as client:
        yield client


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    work = tmp_path_factory.mktemp("service-agents")
    started: list[SimAgent] = []

    class Sims:
        def start(self, kahuna, agent: dict, **kwargs) -> SimAgent:
            sim = SimAgent(kahuna, work, agent, **kwargs)
            started.append(sim)
            return sim

        def kaktus(self, kahuna, agent: dict, **kwargs) -> SimAgent:
            sim = SimAgent(kahuna, work, agent, **kwargs)
            started.append(sim)
            return sim

    yield Sims()
    for sim in started:
        sim.stop()
