"""Run the real Kahuna (`python kahuna.py -c FILE`) as a subprocess on free loopback ports.

Ports are 0 in the generated config; the bound addresses are read from the daemon's own
`listening` log lines, so nothing sleeps and nothing races for a port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r" listening service=(\w+) address=([\d.]+):(\d+)")
MASTER_KEY = "test-master-key-" + "x" * 48


def write_config(path: Path, data_dir: Path, **overrides) -> Path:
    """A config with free ports and a fixed master key; `overrides` are merged into `global`."""
    glob = {
        "logLevel": "INFO",
        "dataDir": str(data_dir),
        "apiKey": MASTER_KEY,
        "http": {"address": "127.0.0.1", "port": 0},
        "ws": {"address": "127.0.0.1", "port": 0},
    }
    for key, value in overrides.items():
        if value is None:
            glob.pop(key, None)
        elif isinstance(value, dict) and isinstance(glob.get(key), dict):
            glob[key] = {**glob[key], **value}
        else:
            glob[key] = value
    path.write_text(yaml.safe_dump({"global": glob}))
    return path


class Kahuna:
    def __init__(self, workdir: Path, config: Path | None = None, args: tuple[str, ...] = ()):
        self.workdir = workdir
        self.config = config
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.http_port = self.hub_port = 0
        self.stdout_path = workdir / "kahuna.stdout"
        self.stderr_path = workdir / "kahuna.stderr"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def start(self, timeout: float = 30.0) -> "Kahuna":
        cmd = [sys.executable, str(ROOT / "kahuna.py")]
        if self.config:
            cmd += ["-c", str(self.config)]
        cmd += list(self.args)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.offset = err.tell()
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=out, stderr=err,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = dict((m[1], int(m[3])) for m in LISTENING.finditer(self.new_stderr()))
            if "http" in ports and "hub" in ports:
                self.http_port, self.hub_port = ports["http"], ports["hub"]
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"kahuna exited {self.proc.returncode}: {self.new_stderr()[-2000:]}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"kahuna did not start: {self.new_stderr()[-2000:]}")

    def new_stderr(self) -> str:
        with open(self.stderr_path, "rb") as err:
            err.seek(self.offset)
            return err.read().decode(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "Kahuna":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                pass
