"""Run simulated agents.

    python -m agent.sim kaktus -c kaktus.yml [-d]        one agent, upstream's YAML config
    python -m agent.sim kiwi -c kiwi.yml [-d]
    python -m agent.sim kontroller --iso cidata.iso [-e ws://hub/ws] [--metadata-url URL]
    python -m agent.sim fleet -k agents.txt -e ws://127.0.0.1:8081/ws [-t Kaktus] [-n N]
                              [--first I] [-C 200] [--auth hmac|key] [--ping 0] [--report 10]
                              [--sim-config sim.yml]

kaktus / kiwi also take  --state FILE  (JSON of the model, rewritten after every call: pools,
images, ISO files, domains, exports, calls) and  --fault METHOD=fail:MESSAGE | METHOD=delay:SECONDS
| METHOD=drop  (repeatable) for tests that run the sim as a process. A Kontroller boots like an
appliance: agent id, key, hub and metadata URL come from the ISO's meta-data (-c still works:
then a plain agent that only counts reloads).

The fleet runs one simulated agent per `id key [type]` line of the keys file (the load
generator's format) in this one process, connecting at most -C at a time. SIGTERM/SIGINT close
every session with 1000 and exit 0.
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys

import trio
import yaml

from ..config import load_config
from ..sdk import AGENT_TYPES, run_until_signalled
from .cidata import read_iso
from .harness import SimKaktus, SimKiwi, SimKontroller, SimAgent
from .services import build_agent, new_model

log = logging.getLogger("agent.sim")


def _type_name(kind: str) -> str:
    for name in AGENT_TYPES:
        if name.lower() == kind.lower():
            return name
    raise argparse.ArgumentTypeError(f"unknown agent type {kind!r}")


def read_keys(path: str, default_type: str, first: int = 0, count: int = 0) -> list[tuple[str, str, str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (2, 3):
                raise SystemExit(f"{path}:{number}: expected 'id key [type]'")
            out.append((parts[0], parts[1], _type_name(parts[2]) if len(parts) == 3 else default_type))
    out = out[first:]
    return out[:count] if count > 0 else out


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(max(soft, wanted), hard)
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


async def _report(agents: list, every: float) -> None:
    while True:
        await trio.sleep(every)
        up = sum(1 for a in agents if a.connected)
        log.info("fleet: %d/%d connected", up, len(agents))


async def run_fleet(args: argparse.Namespace) -> None:
    entries = read_keys(args.keys, args.type, args.first, args.count)
    if not entries:
        raise SystemExit("no agents in the keys file")
    limit = raise_nofile(len(entries) + 256)
    if limit < len(entries) + 64:
        log.warning("RLIMIT_NOFILE is %d: not enough for %d agents", limit, len(entries))
    limiter = trio.CapacityLimiter(args.concurrency)
    sections = {}
    if args.sim_config:
        with open(args.sim_config, encoding="utf-8") as f:
            sections = yaml.safe_load(f) or {}
        if isinstance(sections.get("libvirt"), dict):   # ports are handed out one per Kaktus
            sections["libvirt"] = {k: v for k, v in sections["libvirt"].items() if k != "port"}
    agents = []
    for agent_id, key, agent_type in entries:
        # every Kaktus has its own libvirt port in this process: they can migrate to each other
        agent, _ = build_agent(agent_type, agent_id, key, args.endpoint, auth=args.auth,
                               sections=sections, ping_interval=args.ping or None,
                               connect_limiter=limiter)
        agents.append(agent)
    log.info("fleet: %d agents -> %s", len(agents), agents[0].url)
    async with trio.open_nursery() as nursery:
        if args.report > 0:
            nursery.start_soon(_report, agents, args.report)
        await run_until_signalled(agents)
        nursery.cancel_scope.cancel()


async def run_single(args: argparse.Namespace) -> None:
    if args.kind == "Kontroller" and args.iso:
        sim: SimAgent = _appliance(args)
    else:
        if not args.config:
            raise SystemExit("-c/--config is required")
        config = load_config(args.config)
        if not args.debug:
            logging.getLogger().setLevel(config.logging_level())
        kwargs = dict(auth=config.auth, ssl_context=config.ssl_context(),
                      state_file=getattr(args, "state", None))
        if args.kind == "Kaktus":
            sim = SimKaktus(config.agent_id, config.api_key, config.endpoint,
                            model=new_model("Kaktus", config.sections), **kwargs)
        elif args.kind == "Kiwi":
            sim = SimKiwi(config.agent_id, config.api_key, config.endpoint, **kwargs)
        else:
            agent, _ = build_agent(args.kind, config.agent_id, config.api_key, config.endpoint,
                                   sections=config.sections, auth=config.auth,
                                   ssl_context=config.ssl_context())
            await run_until_signalled([agent])
            return
    for spec in getattr(args, "fault", None) or []:
        sim.faults.parse(spec)
    sim.dump_state()
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        await sim.astop()
        nursery.cancel_scope.cancel()


def _appliance(args: argparse.Namespace) -> SimKontroller:
    with open(args.iso, "rb") as f:
        files = read_iso(f.read())
    return SimKontroller(lambda: files, endpoint=args.endpoint, metadata_url=args.metadata_url,
                         state_file=args.state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for kind in ("kaktus", "kiwi", "kontroller"):
        p = sub.add_parser(kind, help=f"one simulated {kind.capitalize()} agent")
        p.add_argument("-c", "--config", required=kind != "kontroller",
                       help="agent YAML (upstream format)")
        p.add_argument("-d", "--debug", action="store_true")
        p.add_argument("--state", help="JSON state dump, rewritten after every call")
        p.add_argument("--fault", action="append", default=[],
                       help="METHOD=fail:MESSAGE | METHOD=delay:SECONDS | METHOD=drop")
        if kind == "kontroller":
            p.add_argument("--iso", help="the appliance's cloud-init ISO (meta-data: id, key, hub)")
            p.add_argument("-e", "--endpoint", help="hub URL instead of kowabunga_controller_uri")
            p.add_argument("--metadata-url", help="instead of kowabunga_metadata_uri")
    p = sub.add_parser("fleet", help="many simulated agents in one process")
    p.add_argument("-k", "--keys", required=True, help="file of 'id key [type]' lines")
    p.add_argument("-e", "--endpoint", required=True, help="hub URL, e.g. ws://127.0.0.1:8081/ws")
    p.add_argument("-t", "--type", type=_type_name, default="Kaktus", help="default agent type")
    p.add_argument("-n", "--count", type=int, default=0, help="use only N agents (0: all)")
    p.add_argument("--first", type=int, default=0, help="skip the first I lines")
    p.add_argument("-C", "--concurrency", type=int, default=200, help="connection attempts at once")
    p.add_argument("--auth", choices=("hmac", "key"), default="hmac")
    p.add_argument("--ping", type=float, default=0.0, help="agent-side ping period (0: off)")
    p.add_argument("--report", type=float, default=10.0, help="log the connected count every S s")
    p.add_argument("--sim-config", help="YAML with the `sim:` / `libvirt:` sections every Kaktus uses")
    p.add_argument("-d", "--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        logging.getLogger("trio-websocket").setLevel(logging.WARNING)
    if args.command == "fleet":
        if args.first < 0:
            parser.error("--first must be >= 0")
        trio.run(run_fleet, args)
    else:
        args.kind = _type_name(args.command)
        trio.run(run_single, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
