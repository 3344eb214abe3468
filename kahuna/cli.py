"""Command line: run the daemon (default), or run migrations (-m) and exit.

Exit codes: 0 clean stop, 1 runtime failure (e.g. the database is unreachable at start, a port
already in use), 2 bad usage or configuration (the configuration file is checked before any port
is bound).

The daemon binds its ports right after reading the configuration (kahuna/listeners.py), then
imports its stack (kahuna.server and what it pulls: trio, quart, hypercorn, the API) and loads the
store: so the heavy imports live in the functions below, not at the top of this module.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys

from kahuna import __version__, logs
from kahuna.config import Config, ConfigError, Secrets, load
from kahuna.listeners import BindError, bind

log = logs.get_logger("kahuna")


AGENT_TYPE_CHOICES = ("Kaktus", "Kiwi", "Kontroller")  # kahuna.resources.agents.AGENT_TYPES (tested)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kahuna", description="Kowabunga orchestrator")
    parser.add_argument("-c", "--config", help="YAML configuration file (upstream kahuna.yml keys)")
    parser.add_argument("-d", "--debug", action="store_true", help="force DEBUG logs")
    parser.add_argument("-m", "--migrate", action="store_true",
                        help="create missing indexes and exit")
    parser.add_argument("-V", "--version", action="version", version=f"kahuna {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    agent = commands.add_parser("agent", help="manage agents and their keys (prints keys once)")
    agent_cmds = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    create = agent_cmds.add_parser("create", help="create an agent and its key")
    create.add_argument("--name", required=True)
    create.add_argument("--type", required=True, choices=AGENT_TYPE_CHOICES)
    create.add_argument("--description", default="")
    create.add_argument("--count", type=int, default=1,
                        help="create COUNT agents named NAME-0001... (one JSON line each with --json)")
    create.add_argument("--json", action="store_true", help="print {id, type, key} as JSON")
    rotate = agent_cmds.add_parser("rotate-key", help="issue a new key for an existing agent")
    rotate.add_argument("agent_id")
    rotate.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def fail(message: str, code: int = 2) -> int:
    print(f"kahuna: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        config, unknown = load(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    if args.debug:
        config = config.with_debug()
    logs.setup(config.log_level)
    for key in unknown:
        log.warning("unknown configuration key ignored", key=key)
    listeners = None
    if not args.command and not args.migrate:
        try:  # first: agents and clients dialing from now on queue instead of being refused
            listeners = bind(config)
        except OSError as exc:  # BindError names the setting and the address
            return fail(str(exc) if isinstance(exc, BindError) else f"cannot listen: {exc}", 1)
        gc.disable()  # no collections while starting; kahuna.server.run resumes them once serving
    try:
        # a sub-command's stdout is its output (JSON): the one-time key notice goes to stderr
        secrets = ensure_secrets(config, sys.stderr if args.command else sys.stdout)
    except (OSError, ValueError) as exc:
        if listeners is not None:
            listeners.close()
        return fail(f"global.dataDir: {config.data_dir}: {exc}")
    import trio

    from kahuna.store import errors as store_errors
    try:
        if args.command == "agent":
            return trio.run(agent_command, config, secrets, args)
        if args.migrate:
            trio.run(migrate, config)
        else:
            trio.run(serve_until_signal, config, secrets, listeners)
    except store_errors.Unavailable as exc:
        log.error("database unavailable", error=str(exc))
        return 1
    finally:
        if listeners is not None:
            listeners.close()
    return 0


def ensure_secrets(config: Config, notice=None) -> Secrets:
    """Use the configured secrets, or those generated into the data directory."""
    from kahuna.auth import generated
    generated.ensure_data_dir(config.data_dir)
    master = config.api_key
    if not master:
        made = generated.master_api_key(config.data_dir)
        master = made.value
        if made.created:
            announce_master_key(made, notice or sys.stdout)
    jwt = config.jwt_signature or generated.jwt_signature(config.data_dir).value
    server = config.server_secret or generated.server_secret(config.data_dir).value
    return Secrets(master_key=master, jwt_signature=jwt, server_secret=server)


def announce_master_key(made, stream) -> None:
    """Shown once, on the terminal only (never in a log line)."""
    print(
        "\nKahuna generated a master API key (superAdmin). It is shown this once;\n"
        f"it is kept in {made.path} (mode 0600) and reused on later starts.\n"
        "Authenticate API calls with the header:\n\n"
        f"    X-API-Key: {made.value}\n\n"
        "e.g. curl -H 'X-API-Key: <key>' http://127.0.0.1:8080/api/v1/region\n",
        file=stream, flush=True,
    )


async def serve_until_signal(config: Config, secrets: Secrets, listeners=None) -> None:
    import trio

    from kahuna.server import run
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        await run(config, secrets, shutdown, listeners=listeners)
        nursery.cancel_scope.cancel()
    log.info("stopped")


async def _watch_signals(shutdown, scope) -> None:
    import trio
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if shutdown.is_set():  # a second signal: stop now
                scope.cancel()
                return
            log.info("signal received", signal=signal.Signals(signum).name)
            shutdown.set()


async def migrate(config: Config) -> None:
    from kahuna.server import prepared_store
    async with prepared_store(config):
        pass
    log.info("migration done", detail="indexes ensured")


async def agent_command(config: Config, secrets: Secrets, args: argparse.Namespace) -> int:
    """Create agents / rotate keys straight in the store, for operators without mail. A running
    Kahuna on the same database picks the new keys up within seconds (credentials marker)."""
    from kahuna.orchestrator.agent_credentials import StoredAgentCredentials
    from kahuna.orchestrator.agent_keys import AgentKeys
    from kahuna.resources.errors import DomainError
    from kahuna.resources.service import Resources
    from kahuna.server import prepared_store
    async with prepared_store(config) as store:
        resources = Resources(store, config=config, secrets=secrets)
        keys = AgentKeys(resources, StoredAgentCredentials(resources, secrets.server_secret))
        try:
            if args.agent_command == "rotate-key":
                agent = await resources.get("agent", args.agent_id)
                _, key = await keys.issue(agent["_id"])
                _print_agent(agent, key, args.json)
                return 0
            if args.count < 1:
                return fail("--count must be at least 1")
            for i in range(1, args.count + 1):
                name = args.name if args.count == 1 else f"{args.name}-{i:04d}"
                agent = await resources.create("agent", {"name": name, "type": args.type,
                                                         "description": args.description})
                _, key = await keys.issue(agent["_id"], announce=False)
                _print_agent(agent, key, args.json)
            await keys.credentials.bump_marker()
        except DomainError as exc:
            return fail(exc.reason, 1)
    return 0


def _print_agent(agent: dict, key: str, as_json: bool) -> None:
    """The key is shown here once; it is stored only as a digest and a sealed copy."""
    if as_json:
        print(json.dumps({"id": agent["_id"], "name": agent["name"], "type": agent["type"], "key": key}),
              flush=True)
    else:
        print(f"agent {agent['name']} ({agent['type']})\n  id:  {agent['_id']}\n  key: {key}\n"
              "Put them in the agent's configuration (global.id, global.apiKey); the key is not "
              "shown again.", flush=True)


def entry() -> int:
    """The `kahuna` console script (same as `python kahuna.py`)."""
    return main(sys.argv[1:])
