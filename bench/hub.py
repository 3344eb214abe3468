"""Agent hub benchmark: Kahuna's hub against the Go reference hub, side by side, in one run.

    python bench/hub.py [N ...]          default N: 1000 5000 10000 19900

For each implementation the same Go load generator (`../shared/peers/bin/loadgen`) drives the
agents from a separate process, through the same script (`../shared/peers/bench.sh`):
- gohub: the reference, its agents derived from its benchmark key rule;
- kahuna: the real daemon (`bench/pyhub.py`: API + hub + embedded store), its agents created
  beforehand with `kahuna.py agent create --count N --json` (real keys, stored as digests and
  sealed copies), handed to the load generator as `id key type` lines.
Then one JSON line per N: both sets of figures and Kahuna's ratio to Go's for each target of
issue 13 (session RSS ≤ 0.35×, fan-out ≤ 1.5×, RPC/s ≥ 0.5×, reconnect storm ≤ 3×,
connect-all ≤ 2×). The table for the README is printed at the end. Needs Debian's golang-go, golang-github-gorilla-websocket-dev,
jq and curl (bench.sh builds the Go programs). Figures, not assertions: this is not a test.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
HUB_PORT, CTL_PORT, LG_CTL_PORT, HTTP_PORT = 18080, 18081, 18082, 18090

TARGETS = {  # figure: (ratio kahuna/go, comparison, bound) -- issue 13
    "rss_per_conn_kib": ("<=", 0.35),
    "fanout_median_ms": ("<=", 1.5),
    "rpc_rps": (">=", 0.5),
    "reconnect_s": ("<=", 3.0),
    "connect_all_s": ("<=", 2.0),
}


def say(msg: str) -> None:
    print(f"[bench/hub {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_bench_sh(impl: str, ns: list[int], results: Path, env_extra: dict[str, str]) -> list[dict]:
    env = {**os.environ, "IMPL": impl, "RESULTS": str(results), "HUB_PORT": str(HUB_PORT),
           "CTL_PORT": str(CTL_PORT), "LG_CTL_PORT": str(LG_CTL_PORT), **env_extra}
    say(f"{impl}: bench.sh {' '.join(map(str, ns))}")
    subprocess.run(["bash", str(PEERS / "bench.sh"), *map(str, ns)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def compile_sources() -> None:
    """Write the daemon's bytecode first, as an installed daemon has it (its first start caches
    it): this machine sets PYTHONDONTWRITEBYTECODE, so otherwise every start of the daemon --
    the reconnect storm's restart included -- compiled every module again (py-spy: a fifth of
    a restart; the hub listened after 1.4-1.8 s instead of 1.1-1.3 s with 19,900 agents)."""
    for package in ("kahuna", "agent"):
        compileall.compile_dir(str(ROOT / package), quiet=1)


def prepare_kahuna(work: Path, n_max: int) -> tuple[Path, Path]:
    compile_sources()
    config = work / "kahuna.yml"
    config.write_text(
        "global:\n"
        f"  dataDir: {work / 'data'}\n"
        "  logLevel: WARNING\n"
        f"  http: {{address: 127.0.0.1, port: {HTTP_PORT}}}\n"
        f"  ws: {{address: 127.0.0.1, port: {HUB_PORT}}}\n")
    keys = work / "agents.txt"
    say(f"kahuna: creating {n_max} agents and their keys")
    started = time.monotonic()
    out = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(config), "agent", "create",
                          "--name", "bench", "--type", "Kaktus", "--count", str(n_max), "--json"],
                         check=True, capture_output=True, text=True)
    with keys.open("w") as f:
        for line in out.stdout.splitlines():
            agent = json.loads(line)
            f.write(f"{agent['id']} {agent['key']} {agent['type']}\n")
    say(f"kahuna: {n_max} agents created in {time.monotonic() - started:.1f} s")
    return config, keys


def figures(row: dict) -> dict:
    return {
        "complete": row.get("complete"),
        "connect_all_s": row.get("connect_all_s"),
        "rss_per_conn_kib": row.get("rss_per_conn_kib"),
        "fanout_median_ms": (row.get("fanout_ms") or {}).get("median"),
        "fanout_min_replies": row.get("fanout_min_replies"),
        "rpc_rps": row.get("rpc_rps"),
        "rpc_p99_ms": row.get("rpc_p99_ms"),
        "drops_while_held": row.get("drops_while_held"),
        "reconnect_s": row.get("reconnect_s"),
        "problems": row.get("problems") or row.get("skipped"),
    }


def compare(n: int, ours: dict, go: dict) -> dict:
    ratios, met = {}, {}
    for key in ("connect_all_s", "rss_per_conn_kib", "fanout_median_ms", "rpc_rps", "reconnect_s"):
        a, b = ours.get(key), go.get(key)
        ratios[key] = round(a / b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
    for key, (op, bound) in TARGETS.items():
        r = ratios.get(key)
        met[key] = None if r is None else (r <= bound if op == "<=" else r >= bound)
    return {"n": n, "kahuna": ours, "gohub": go, "ratio": ratios, "target_met": met}


def _num(value, digits: int = 2):
    return "—" if value is None else (round(value) if digits == 0 else round(value, digits))


def table(lines: list[dict]) -> str:
    """The README table: Kahuna's figure, Go's in brackets, and the ratio."""
    rows = ["| N | connect-all s (Go) | ratio | RSS KiB/session (Go) | ratio | fan-out median ms (Go) "
            "| ratio | RPC/s (Go) | ratio | reconnect s (Go) | ratio | drops |", "|" + "---|" * 12]
    for line in lines:
        k, g, r = line["kahuna"], line["gohub"], line["ratio"]
        pair = lambda key, d=2: f"{_num(k.get(key), d)} ({_num(g.get(key), d)})"  # noqa: E731
        rows.append(f"| {line['n']} | {pair('connect_all_s')} | {r['connect_all_s']} | {pair('rss_per_conn_kib', 1)} "
                    f"| {r['rss_per_conn_kib']} | {pair('fanout_median_ms', 0)} | {r['fanout_median_ms']} "
                    f"| {pair('rpc_rps', 0)} | {r['rpc_rps']} | {pair('reconnect_s')} | {r['reconnect_s']} "
                    f"| {k.get('drops_while_held')} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="*", type=int, default=[1000, 5000, 10000, 19900])
    parser.add_argument("--skip-go", action="store_true", help="reuse no Go run: measure Kahuna only")
    args = parser.parse_args()
    if not (PEERS / "bench.sh").exists():
        print(f"bench/hub.py: {PEERS / 'bench.sh'} not found (the shared peers sit beside the repo)",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kahuna-bench-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)

    try:
        go_rows = {} if args.skip_go else {
            r["n"]: r for r in run_bench_sh("gohub", args.n, out_dir / f"gohub-{stamp}.jsonl", {})}
        config, keys = prepare_kahuna(work, max(args.n))
        hub_cmd = f"{sys.executable} {ROOT / 'bench' / 'pyhub.py'} -c {config} --ctl 127.0.0.1:{CTL_PORT}"
        ours = {r["n"]: r for r in run_bench_sh("kahuna", args.n, out_dir / f"kahuna-{stamp}.jsonl", {
            "HUB_CMD": hub_cmd, "LOADGEN_ARGS": f"-keys {keys}"})}
    finally:
        shutil.rmtree(work, ignore_errors=True)  # ~1 KiB per agent of store and keys

    lines = []
    for n in args.n:
        line = compare(n, figures(ours.get(n, {})), figures(go_rows.get(n, {})))
        lines.append(line)
        print(json.dumps(line), flush=True)
    print(table(lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
