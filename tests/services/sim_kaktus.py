"""tests.infra.sim_agent, with the Kaktus model's CephFS subvolumes and NFS exports in its state
file (what the Kylo tests assert on). Test double only.

    python -m tests.services.sim_kaktus kaktus -c AGENT.yml --state FILE [--fail M=MSG] [--delay M=S]
"""

from __future__ import annotations

import argparse
import logging

import trio

from agent.sim.model import KaktusModel
from tests.infra import sim_agent

_base_snapshot = sim_agent.snapshot


def snapshot(model, calls, done) -> dict:
    out = _base_snapshot(model, calls, done)
    if isinstance(model, KaktusModel):
        out["filesystems"] = {fs: sorted(subs) for fs, subs in model.filesystems.items()}
        out["exports"] = {str(k): v for k, v in model.nfs_exports.items()}
    return out


sim_agent.snapshot = snapshot

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.services.sim_kaktus")
    parser.add_argument("kind", choices=("kaktus", "kiwi"))
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--delay", action="append", default=[])
    parser.add_argument("--fail", action="append", default=[])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(sim_agent.main, parser.parse_args())
