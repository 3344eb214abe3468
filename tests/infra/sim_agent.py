"""The simulated agent of the infrastructure tests: agent.sim's handlers over its in-memory
models (the same as `python -m agent.sim`), plus what these tests need to observe and disturb it.

    python -m tests.infra.sim_agent kaktus|kiwi -c AGENT.yml --state FILE
                                   [--delay METHOD=SECONDS]... [--fail METHOD=MESSAGE]...

--state   after every call, the model's state as JSON in FILE (written atomically): a Kiwi's
          zones and records, a Kaktus's pools and volumes, the calls received and their outcomes.
--delay   METHOD answers only after SECONDS (to run into Kahuna's call timeout).
--fail    METHOD answers the error MESSAGE instead of doing anything.

This is a test double: nothing here exists in a real agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import trio

from agent.config import load_config
from agent.sdk import Agent, run_until_signalled
from agent.sim.model import KaktusModel, KiwiModel, SimError
from agent.sim.services import handlers_for, new_model


def snapshot(model: Any, calls: list[str], done: list[str]) -> dict:
    """`calls`: methods as they arrived; `done`: "Method:ok" / "Method:error" as they ended."""
    out: dict[str, Any] = {"calls": calls, "done": done}
    if isinstance(model, KiwiModel):
        out.update(zones=model.zones, records=model.records(), reloads=model.reloads)
    if isinstance(model, KaktusModel):
        out["pools"] = {name: {"capacity": p.capacity, "allocated": p.allocated,
                               "volumes": {v.name: {"size": v.size, "kind": v.kind, "source": v.source_url}
                                           for v in p.volumes.values()}}
                        for name, p in model.pools.items()}
        out["filesystems"] = {fs: sorted(subs) for fs, subs in model.filesystems.items()}
        out["exports"] = {str(k): v for k, v in model.nfs_exports.items()}
    return out


def instrument(handlers: dict, model: Any, state: Path, delays: dict[str, float],
               failures: dict[str, str]) -> dict:
    calls: list[str] = []
    done: list[str] = []

    def save() -> None:
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot(model, calls, done)))
        os.replace(tmp, state)

    def wrap(name: str, fn):
        async def run(params: Any) -> Any:
            calls.append(name)
            outcome = "error"
            try:
                if name in delays:
                    await trio.sleep(delays[name])
                if name in failures:
                    raise SimError(failures[name])
                result = fn(params)
                outcome = "ok"
                return result
            finally:
                done.append(f"{name}:{outcome}")
                save()
        return run

    save()
    return {name: wrap(name, fn) for name, fn in handlers.items()}


def pairs(values: list[str], convert) -> dict:
    out = {}
    for value in values:
        name, _, arg = value.partition("=")
        out[name] = convert(arg)
    return out


async def main(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    agent_type = args.kind.capitalize()
    model = new_model(agent_type, config.sections)
    handlers = instrument(handlers_for(agent_type, model), model, Path(args.state),
                          pairs(args.delay, float), pairs(args.fail, str))
    agent = Agent(agent_type, config.agent_id, config.api_key, config.endpoint, handlers=handlers,
                  auth=config.auth, backoff_initial=0.2, backoff_max=1.0)
    await run_until_signalled([agent])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.infra.sim_agent")
    parser.add_argument("kind", choices=("kaktus", "kiwi"))
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--delay", action="append", default=[])
    parser.add_argument("--fail", action="append", default=[])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(main, parser.parse_args())
