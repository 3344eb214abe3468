"""Fixtures of the infrastructure tests: one real Kahuna per module (embedded store, a short
agent call timeout so that timeouts are testable) and the simulated agents started next to it."""

from __future__ import annotations

import pytest

from tests.conftest import make_client
from tests.infra.helpers import CALL_TIMEOUT, SimAgent
from tests.kahuna_proc import Kahuna, write_config


@pytest.fixture(scope="module")
def kahuna(tmp_path_factory):
    work = tmp_path_factory.mktemp("infra")
    config = write_config(work / "kahuna.yml", work / "data", ws={"callTimeout": CALL_TIMEOUT})
    with Kahuna(work, config) as k:
        k.config_path = config
        yield k


@pytest.fixture(scope="module")
def admin(kahuna):
    with make_client(kahuna) as client:
        yield client


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """Start simulated agents with `sims.start(kahuna, agent, ...)`; all stopped at module end."""
    work = tmp_path_factory.mktemp("agents")
    started: list[SimAgent] = []

    class Sims:
        def start(self, kahuna, agent: dict, **kwargs) -> SimAgent:
            sim = SimAgent(kahuna, work, agent, **kwargs)
            started.append(sim)
            return sim

    yield Sims()
    for sim in started:
        sim.stop()
