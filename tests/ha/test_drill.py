"""The failover drill (issue 11): real keepalived and real Caddy in network namespaces.

Stage two of `.ci/run` (`python -m pytest -m drill tests/ha/test_drill.py -s`); in the default
run it skips, saying so. Needs root, `ip netns`, keepalived, caddy, curl. Everything lives in
namespaces created here (named `kdrill-*`) on a bridge in a namespace of its own: nothing is
added to the host's own network. Addresses from 198.18.0.0/15 (benchmarking range):

    kdrill-db   198.18.0.1   nx-27017 (the shared MongoDB-wire store)
    kdrill-n1   198.18.0.11  Kahuna + Caddy + keepalived      VIP 198.18.0.10
    kdrill-n2   198.18.0.12  Kahuna + Caddy + keepalived
    kdrill-cli  198.18.0.100 the API writer and the simulated agents (through the VIP)

Default HA timings (lease 6 s, renew 1 s, margin 2 s); keepalived checks every second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.kahuna_proc import MASTER_KEY, ROOT

pytestmark = pytest.mark.drill

NETNS = "kdrill-net"
NODES = {"kdrill-n1": "198.18.0.11", "kdrill-n2": "198.18.0.12"}
DB, CLI = ("kdrill-db", "198.18.0.1"), ("kdrill-cli", "198.18.0.100")
VIP = "198.18.0.10"
SECRETS = {"serverSecret": "drill-server-secret-" + "s" * 40, "jwt": {"signature": "drill-jwt-" + "j" * 40}}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "caddy", "keepalived", "curl"):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            return f"{tool} is not installed (.ci/run installs Debian's keepalived and caddy)"
    try:
        subprocess.run(["ip", "netns", "add", "kdrill-probe"], check=True, capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", "kdrill-probe"], check=True, capture_output=True, timeout=10)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"`ip netns add` does not work here: {exc}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _gate(request):
    if "drill" not in (request.config.option.markexpr or ""):
        pytest.skip("the failover drill is .ci/run's stage two: python -m pytest -m drill tests/ha/test_drill.py")
    why = _why_not()
    if why:
        pytest.skip(why)


def sh(*args, check=True, timeout=20):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


def nsexec(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


def curl_status(ns, url) -> int:
    out = sh(*nsexec(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", url), check=False)
    return int(out.stdout or 0)


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out ({timeout}s) waiting for {what}")


def vip_holder() -> list[str]:
    return [ns for ns in NODES if VIP in sh("ip", "-n", ns, "addr", "show", check=False).stdout]


class Drill:
    def __init__(self, work: Path):
        self.work = work
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name, ns, *cmd, cwd=None, env=None):
        log = open(self.work / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(nsexec(ns, *cmd), cwd=cwd or self.work, stdout=log, stderr=log,
                                            env={**os.environ, **(env or {})}, start_new_session=True)
        return self.procs[name]

    def log(self, name) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def network(self):
        self.teardown_network()
        sh("ip", "netns", "add", NETNS)
        sh("ip", "-n", NETNS, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", NETNS, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate([DB, CLI, *NODES.items()]):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", f"kd{i}a", "netns", ns, "type", "veth", "peer", "name", f"kd{i}b",
               "netns", NETNS)
            sh("ip", "-n", ns, "link", "set", f"kd{i}a", "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", NETNS, "link", "set", f"kd{i}b", "master", "br0")
            sh("ip", "-n", NETNS, "link", "set", f"kd{i}b", "up")

    @staticmethod
    def teardown_network():
        for ns in (NETNS, DB[0], CLI[0], *NODES):
            sh("ip", "netns", "del", ns, check=False)

    def kahuna(self, ns):
        d = self.work / ns
        d.mkdir(exist_ok=True)
        cfg = d / "kahuna.yml"
        cfg.write_text(yaml.safe_dump({"global": {
            "logLevel": "INFO", "dataDir": str(d / "data"), "apiKey": MASTER_KEY,
            "publicUrl": f"http://{VIP}", **SECRETS,
            "http": {"address": "127.0.0.1", "port": 8080, "trustedProxies": ["127.0.0.1"]},
            "ws": {"address": "127.0.0.1", "port": 8081},
            "db": {"uri": f"mongodb://{DB[1]}:27017", "name": "drill"},
            "ha": {"nodeId": ns}}}))
        self.spawn(f"kahuna-{ns}", ns, sys.executable, str(ROOT / "kahuna.py"), "-c", str(cfg), cwd=d,
                   env={"PYTHONUNBUFFERED": "1"})
        wait(lambda: curl_status(ns, "http://127.0.0.1:8080/healthz") in (200, 503), 30, f"kahuna in {ns}")
        return cfg

    def caddy(self, ns):
        d = self.work / ns
        koala = d / "koala"
        koala.mkdir(exist_ok=True)
        (koala / "index.html").write_text("koala")
        text = (ROOT / "conf" / "Caddyfile").read_text().replace("kowabunga.acme.com {", "http://:80 {")
        text = text.replace("/usr/share/kowabunga-koala", str(koala))
        (d / "Caddyfile").write_text(text)
        self.spawn(f"caddy-{ns}", ns, "caddy", "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile",
                   env={"HOME": str(d), "XDG_DATA_HOME": str(d), "XDG_CONFIG_HOME": str(d)})
        wait(lambda: curl_status(ns, "http://127.0.0.1:2019/config/") == 200, 20, f"caddy in {ns}")

    def keepalived(self, ns):
        d = self.work / ns
        me, peer = NODES[ns], [a for n, a in NODES.items() if n != ns][0]
        text = (ROOT / "conf" / "keepalived.conf").read_text()
        text = (text.replace("/usr/local/lib/kahuna/kahuna-check", str(ROOT / "conf" / "kahuna-check"))
                .replace("unicast_src_ip 192.0.2.11", f"unicast_src_ip {me}")
                .replace("        192.0.2.12 ", f"        {peer} ")
                .replace("192.0.2.10/24", f"{VIP}/24").replace("priority 100", "priority 100"))
        (d / "keepalived.conf").write_text(text)
        self.spawn(f"keepalived-{ns}", ns, "keepalived", "-n", "-l", "-D", "-f", str(d / "keepalived.conf"),
                   "-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid"), "-i", ns)

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGCONT)
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)


def kahuna_pid(d: Drill, ns) -> int:
    # `ip netns exec` execs the command: the Popen pid is Kahuna's own
    return d.procs[f"kahuna-{ns}"].pid


def read_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def test_failover_drill(tmp_path_factory):
    work = tmp_path_factory.mktemp("drill")
    os.chmod(work, 0o755)
    d = Drill(work)
    figures = {}
    try:
        d.network()
        d.spawn("nx", DB[0], str(Path(sys.executable).with_name("nx-27017")) if
                Path(sys.executable).with_name("nx-27017").exists() else "nx-27017",
                "--db", "memory", "--host", DB[1], "-p", "27017",
                "--pid-file", str(work / "nx.pid"), "--log-file", str(work / "nx.log"))
        time.sleep(1.0)
        n1, n2 = NODES
        cfg1 = d.kahuna(n1)
        wait(lambda: curl_status(n1, "http://127.0.0.1:8080/healthz") == 200, 15, "n1 active")
        d.kahuna(n2)
        for ns in NODES:
            d.caddy(ns)
            d.keepalived(ns)
        wait(lambda: vip_holder() == [n1], 20, "the VIP on n1")

        # agents, created with the admin CLI (straight in the store), connected through the VIP
        agents = []
        for i, kind in enumerate(["Kaktus", "Kaktus", "Kiwi", "Kiwi"]):
            out = sh(*nsexec(n1, sys.executable, str(ROOT / "kahuna.py"), "-c", str(cfg1), "agent", "create",
                             "--name", f"drill-{kind.lower()}-{i}", "--type", kind, "--json"), timeout=60)
            agent = json.loads(out.stdout)
            agents.append(agent["id"])
            acfg = work / f"agent-{i}.yml"
            acfg.write_text(yaml.safe_dump({"global": {"id": agent["id"], "apiKey": agent["key"], "auth": "hmac",
                                                       "endpoint": f"ws://{VIP}/ws"}}))
            d.spawn(f"agent-{i}", CLI[0], sys.executable, "-m", "agent.sim", kind.lower(), "-c", str(acfg), cwd=ROOT)

        stop = work / "stop"
        events_path = work / "writer.jsonl"
        writer = subprocess.Popen(nsexec(CLI[0], sys.executable, "-m", "tests.ha.drill_client", "write",
                                         f"http://{VIP}", str(stop), "240", *agents),
                                  cwd=ROOT, stdout=open(events_path, "wb"), stderr=subprocess.DEVNULL)

        def all_agents_since(t):
            return any(e["kind"] == "agents" and e["t"] > t and e["connected"] == len(agents)
                       for e in read_events(events_path))

        def write_ok_since(t):
            return any(e["kind"] == "write" and e["t"] > t and e["status"] in (200, 201)
                       for e in read_events(events_path))

        wait(lambda: all_agents_since(0), 30, "all agents connected through the VIP")
        time.sleep(2)

        # 1. kill -9 the active
        t_kill = time.monotonic()
        os.kill(kahuna_pid(d, n1), signal.SIGKILL)
        t_write = wait(lambda: write_ok_since(t_kill), 30, "a write after the kill")
        t_agents = wait(lambda: all_agents_since(t_kill), 40, "all agents back after the kill")
        figures["kill -> first successful write"] = t_write - t_kill
        figures["kill -> all agents back"] = t_agents - t_kill
        print(f"\nkill -9: first write {t_write - t_kill:.2f} s, all agents back {t_agents - t_kill:.2f} s")
        assert vip_holder() == [n2]

        # 3. SIGSTOP the (new) active past its lease; the restarted n1 takes over; SIGCONT
        d.kahuna(n1)
        wait(lambda: curl_status(n1, "http://127.0.0.1:8080/healthz") == 503, 15, "n1 back as passive")
        time.sleep(2)
        t_stop = time.monotonic()
        os.kill(kahuna_pid(d, n2), signal.SIGSTOP)
        try:
            t_took = wait(lambda: curl_status(n1, "http://127.0.0.1:8080/healthz") == 200, 30, "n1 takes over")
            wait(lambda: write_ok_since(t_took), 30, "writes through the VIP on n1")
            figures["SIGSTOP -> first successful write on the twin"] = time.monotonic() - t_stop
        finally:
            os.kill(kahuna_pid(d, n2), signal.SIGCONT)
        wait(lambda: curl_status(n2, "http://127.0.0.1:8080/healthz") == 503, 10, "the resumed n2 passive")
        time.sleep(1)

        # 4. the store unreachable from the active (n1) only: it fences, n2 takes over
        sh("ip", "-n", DB[0], "route", "add", "blackhole", f"{NODES[n1]}/32")
        t_cut = time.monotonic()
        try:
            wait(lambda: curl_status(n1, "http://127.0.0.1:8080/healthz") == 503, 15, "n1 fences itself")
            figures["store cut -> active fenced"] = time.monotonic() - t_cut
            t_took = wait(lambda: curl_status(n2, "http://127.0.0.1:8080/healthz") == 200, 30, "n2 takes over")
            wait(lambda: write_ok_since(t_took), 30, "writes through the VIP on n2")
            figures["store cut -> first successful write on the twin"] = time.monotonic() - t_cut
        finally:
            sh("ip", "-n", DB[0], "route", "del", "blackhole", f"{NODES[n1]}/32", check=False)

        stop.write_text("stop")
        writer.wait(30)
        events = read_events(events_path)
        acked = {e["name"] for e in events if e["kind"] == "write" and e["status"] in (200, 201)}
        refused = {e["name"] for e in events if e["kind"] == "write" and e["status"] not in (200, 201)}
        out = sh(*nsexec(CLI[0], sys.executable, "-m", "tests.ha.drill_client", "names", f"http://{VIP}"),
                 timeout=120)
        stored = {n for n in json.loads(out.stdout) if n.startswith("w-")}
        figures["writes acknowledged"] = len(acked)
        figures["writes lost (acknowledged, not stored)"] = len(acked - stored)
        figures["writes stored without an acknowledgement (fenced/unacked)"] = len(stored & refused)
        print("\nHA drill figures:")
        for k, v in figures.items():
            print(f"  {k}: {v:.2f} s" if isinstance(v, float) else f"  {k}: {v}")
        (work / "figures.json").write_text(json.dumps(figures))
        assert not acked - stored
        # issue 11's target, 10 s; measured 5.9-6.1 s here: lease 6 s, observed within one renewal
        # period. The standby is BACKUP, not FAULT (conf/keepalived.conf: chk_alive / chk_active),
        # so it took the VIP on the dead active's priority-0 advert, not after a master-down
        # interval (10.2-10.7 s when the standby sat in FAULT)
        assert figures["kill -> first successful write"] <= 10
        assert figures["SIGSTOP -> first successful write on the twin"] <= 10
        assert "Backup received priority 0 advertisement" in d.log(f"keepalived-{n2}")
        # the agents' return also includes their SDK's jittered backoff (agent/sdk.py)
        assert figures["kill -> all agents back"] <= 20
        assert "fenced" in d.log(f"kahuna-{n1}")
    finally:
        d.stop_all()
        d.teardown_network()
