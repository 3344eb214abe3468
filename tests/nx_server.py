"""Start and stop an nx-27017 server (a MongoDB-wire server from PyPI) for tests.

Why a real server over TCP rather than a mock: the mongo backend must be tested through pymongo's
own network layer (server selection, pooling, error mapping). No real mongod can be installed on
these machines (reference/stack-and-peers.md), and nx-27017 speaks the wire protocol well enough.

    from tests.nx_server import nx_server

    with nx_server() as server:          # in-memory database on a free loopback port
        store = MongoStore(server.uri, "test_db")
        ...
        server.stop()                    # e.g. to test what happens when the database vanishes

Each instance gets its own pid and log file (nx-27017 refuses to share them) in a temporary
directory that is removed afterwards, unless `workdir` is given.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["NxServer", "nx_server", "nx_executable"]


def nx_executable() -> str:
    """The nx-27017 script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("nx-27017")
    if beside.exists():
        return str(beside)
    found = shutil.which("nx-27017")
    if not found:
        raise RuntimeError("nx-27017 is not installed (pip install nx-27017==0.8.1)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NxServer:
    """A running nx-27017 process. `uri` is ready for pymongo."""

    port: int
    workdir: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.workdir / "nx.log"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGKILL if it lingers); safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(workdir: Path, startup_timeout: float) -> NxServer:
    port = _free_port()
    (workdir / "nx.pid").unlink(missing_ok=True)  # left by a failed first attempt
    with open(workdir / "stderr.log", "wb") as stderr:
        process = subprocess.Popen(
            [
                nx_executable(),
                "--db", "memory",
                "--host", "127.0.0.1",
                "-p", str(port),
                "--pid-file", str(workdir / "nx.pid"),
                "--log-file", str(workdir / "nx.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    server = NxServer(port=port, workdir=workdir, process=process)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            socket.create_connection((server.host, port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.02)
    server.stop()
    tail = (workdir / "stderr.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"nx-27017 did not listen on port {port} (exit {process.returncode}):\n{tail}")


@contextlib.contextmanager
def nx_server(workdir: Path | None = None, *, startup_timeout: float = 10.0) -> Iterator[NxServer]:
    """Run an in-memory nx-27017 on a free loopback port for the duration of the block.

    Retries once on a fresh port: the free port is found by binding and releasing it, so another
    process can take it in between.
    """
    own_dir = workdir is None
    path = Path(tempfile.mkdtemp(prefix="nx27017-")) if own_dir else Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    try:
        try:
            server = _start(path, startup_timeout)
        except RuntimeError:
            server = _start(path, startup_timeout)
        try:
            yield server
        finally:
            server.stop()
    finally:
        if own_dir:
            shutil.rmtree(path, ignore_errors=True)
