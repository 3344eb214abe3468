"""The real Kahuna (API + hub + store, `kahuna.server.run`) plus the Go reference hub's control
contract on a loopback port, so `../shared/peers/bench.sh` measures it exactly like gohub:

    HUB_CMD="python bench/pyhub.py -c kahuna.yml --ctl 127.0.0.1:18081" IMPL=kahuna bench.sh ...

GET /stats (registered, rss), POST /fanout, POST /rpcload: see kahuna/hub/__main__.py `Control`.
This is a benchmark harness, not part of the daemon: the control port exists only here. The
daemon runs as in production (no gc.freeze() here: frozen sessions would keep their garbage;
`run` freezes only what start-up left, before any session), and starts as `kahuna.py` does: its
ports bound right after the config is read (kahuna/listeners.py), the collector paused, then the
imports and the store.
"""

from __future__ import annotations

import argparse
import gc
import resource
import signal
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kahuna.config import load  # noqa: E402
from kahuna.listeners import bind  # noqa: E402


async def main(args: argparse.Namespace, config, listeners) -> None:
    from kahuna import logs
    from kahuna.cli import ensure_secrets
    from kahuna.hub.__main__ import Control
    from kahuna.server import run
    logs.setup(config.log_level)
    secrets = ensure_secrets(config, sys.stderr)
    host, _, port = args.ctl.rpartition(":")
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(run, config, secrets, shutdown, listeners=listeners))
            extras = trio.CancelScope()
            nursery.start_soon(serve_extras, extras, Control(bound.hub), host, int(port))
            async for _ in signals:
                break
            extras.cancel()
            shutdown.set()  # `run` closes the sessions (1001) and returns; the nursery ends


async def serve_extras(scope: trio.CancelScope, control, host: str, port: int) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.serve_tcp, control.handle, port, host=host))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--ctl", default="127.0.0.1:18081")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args = parser.parse_args()
    config, _ = load(args.config)
    with bind(config) as listeners:  # first: agents of the reconnect storm queue meanwhile
        gc.disable()  # as kahuna.py: no collections while starting (run() resumes them)
        import trio
        trio.run(main, args, config, listeners)
