"""Which Kaktus gets a new instance: a pure function of the candidates, tested without sockets.

Upstream (`Zone.ElectMostFavorableKaktus`, upstream-tenant.md §4.3) scores every Kaktus of the
zone by its usage (2 × instances + vCPUs + GiB of memory) plus 1000 per "sibling" instance (a name
that is the string successor/predecessor of the new one, or at Levenshtein distance < 2), and picks
the lowest, ties to the first listed. It forgets that a host can be full, disconnected or in
maintenance. Here a candidate is eligible only when:
- one of its agents is connected and advertises every method the flow will call;
- it is not in maintenance;
- its capabilities are known and (threads × CPU overcommit, memory × memory overcommit) minus
  what is placed there leaves room for the request;
- no Kwarantine of the request forbids it (policy host: a host holding another member; policy
  zone: a zone holding another member).
Among eligible hosts the lowest score wins; ties go to the name, then the id (never to listing
order or a map's order), so the same facts always give the same host.

Why two statuses: `NoEligibleHost` (503) says the infrastructure cannot serve now — a host that
would fit is disconnected, lacks a method or is in maintenance, and retrying after it comes back
can work. `NoHostCapacity` (507, like a quota) says the request does not fit anywhere as asked —
every reachable host is full or forbidden by anti-affinity — and only freeing resources, adding
hosts or changing the request helps.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kahuna.resources.compute import caps_of
from kahuna.resources.errors import DomainError

GiB = 1024 ** 3
SIBLING_PENALTY = 1000
DEFAULT_METHODS = frozenset({"CreateInstance", "InstanceOperation"})


class NoEligibleHost(DomainError):
    """No Kaktus can take the instance now (the reason names why, host by host)."""

    status, error = 503, "Service Unavailable"


class NoHostCapacity(NoEligibleHost):
    """Every reachable Kaktus is full (or excluded by anti-affinity) for this request."""

    status, error = 507, "Insufficient Storage"


@dataclass(frozen=True)
class Candidate:
    """A Kaktus as placement sees it.

    zone/zone_name: its zone's id and name; connected: one of its agents is connected now;
    methods: the methods its connected agents advertise; cpu_threads/memory: its capabilities
    (0 = not known yet); overcommit_cpu/overcommit_memory: its ratios; used_*: what Kahuna has
    placed there (usage counters); instance_names: names of the instances it runs (siblings).
    """

    id: str
    name: str
    zone: str = ""
    zone_name: str = ""
    connected: bool = False
    methods: frozenset[str] = frozenset()
    maintenance: bool = False
    cpu_threads: int = 0
    memory: int = 0
    overcommit_cpu: int = 1
    overcommit_memory: int = 1
    used_vcpus: int = 0
    used_memory: int = 0
    used_instances: int = 0
    instance_names: tuple[str, ...] = ()

    @property
    def vcpu_capacity(self) -> int:
        return self.cpu_threads * max(1, self.overcommit_cpu)

    @property
    def memory_capacity(self) -> int:
        return self.memory * max(1, self.overcommit_memory)

    @property
    def free_vcpus(self) -> int:
        return self.vcpu_capacity - self.used_vcpus

    @property
    def free_memory(self) -> int:
        return self.memory_capacity - self.used_memory


def candidate_from_kaktus(doc: dict, *, zone_name: str = "", connected: bool = False,
                          methods: Iterable[str] = (), instance_names: Iterable[str] = ()) -> Candidate:
    """A Candidate from a stored Kaktus document (upstream schema v2: `capabilities`,
    `overcommit.{cpu,memory}`, `usage.{vcpus,memory,instances}`, `maintenance`, `zone_id`) and
    the live facts the caller knows (hub connection and advertised methods, instance names)."""
    caps = caps_of(doc)
    over = doc.get("overcommit") or {}
    usage = doc.get("usage") or {}
    return Candidate(id=str(doc.get("_id", doc.get("id", ""))), name=doc.get("name", ""),
                     zone=doc.get("zone_id", ""), zone_name=zone_name, connected=connected,
                     methods=frozenset(methods), maintenance=bool(doc.get("maintenance", False)),
                     cpu_threads=int(caps["cpu"].get("threads") or 0), memory=int(caps.get("memory") or 0),
                     overcommit_cpu=int(over.get("cpu") or 1), overcommit_memory=int(over.get("memory") or 1),
                     used_vcpus=int(usage.get("vcpus") or 0), used_memory=int(usage.get("memory") or 0),
                     used_instances=int(usage.get("instances") or 0), instance_names=tuple(instance_names))


@dataclass(frozen=True)
class Kwarantine:
    """An anti-affinity group of the request: policy "host" or "zone", and where its *other*
    members run (their Kaktus ids and zone ids)."""

    name: str
    policy: str
    hosts: frozenset[str] = frozenset()
    zones: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlacementRequest:
    """What to place. scope: "zone <name>" or "region <name>" (for messages only); the caller
    passes the candidates of that scope. exclude_hosts: Kaktus ids refused outright (kMotion's
    source host, for example)."""

    name: str
    vcpus: int
    memory: int
    scope: str = ""
    methods: frozenset[str] = DEFAULT_METHODS
    kwarantines: tuple[Kwarantine, ...] = ()
    exclude_hosts: frozenset[str] = frozenset()


def successor(s: str) -> str:
    """The string successor (Go xstrings.Successor / Ruby String#succ): `web-1` -> `web-2`,
    `az` -> `ba`, `zz` -> `aaa`, `a9` -> `b0`; no alphanumeric -> the last rune + 1."""
    if not s:
        return s
    chars = list(s)
    idx = [i for i, c in enumerate(chars) if c.isascii() and c.isalnum()]
    if not idx:
        chars[-1] = chr(ord(chars[-1]) + 1)
        return "".join(chars)
    for i in reversed(idx):
        c = chars[i]
        if c == "z":
            chars[i] = "a"
        elif c == "Z":
            chars[i] = "A"
        elif c == "9":
            chars[i] = "0"
        else:
            chars[i] = chr(ord(c) + 1)
            return "".join(chars)
        carry_into = i
    first = chars[carry_into]
    chars.insert(carry_into, {"a": "a", "A": "A", "0": "1"}[first])
    return "".join(chars)


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def is_sibling(name: str, other: str) -> bool:
    return successor(other) == name or successor(name) == other or levenshtein(name, other) < 2


def score(request: PlacementRequest, c: Candidate) -> int:
    """Upstream's score: lower is better."""
    siblings = sum(1 for other in c.instance_names if is_sibling(request.name, other))
    return 2 * c.used_instances + c.used_vcpus + c.used_memory // GiB + SIBLING_PENALTY * siblings


def _gib(n: int) -> str:
    value = n / GiB
    return f"{value:g} GiB" if value == int(value) else f"{value:.1f} GiB"


def refusal(request: PlacementRequest, c: Candidate) -> tuple[str, str] | None:
    """Why `c` cannot take the request: (category, text), or None when it is eligible.
    Categories: "down" (transient: agent, method, maintenance), "full" (capacity), "affinity"."""
    if c.id in request.exclude_hosts:
        return "affinity", "excluded"
    if not c.connected:
        return "down", "no connected agent"
    missing = sorted(request.methods - c.methods)
    if missing:
        return "down", f"its agent does not offer {', '.join(missing)}"
    if c.maintenance:
        return "down", "in maintenance"
    for k in request.kwarantines:
        if k.policy == "zone" and c.zone in k.zones:
            return "affinity", f"Kwarantine {k.name} (zone) has another member in zone {c.zone_name or c.zone}"
        if k.policy != "zone" and c.id in k.hosts:
            return "affinity", f"Kwarantine {k.name} (host) has another member there"
    if c.cpu_threads <= 0 or c.memory <= 0:
        return "down", "capabilities not known yet"
    if c.free_vcpus < request.vcpus:
        return "full", f"{max(0, c.free_vcpus)} free vCPUs"
    if c.free_memory < request.memory:
        return "full", f"{_gib(max(0, c.free_memory))} free memory"
    return None


def _lead(request: PlacementRequest, where: str, categories: set[str], reasons: list[str]) -> str:
    if categories == {"full"}:
        if all("vCPU" in r for r in reasons):
            return f"no Kaktus {where}has {request.vcpus} free vCPUs"
        if all("memory" in r for r in reasons):
            return f"no Kaktus {where}has {_gib(request.memory)} of free memory"
        return f"no Kaktus {where}has {request.vcpus} free vCPUs and {_gib(request.memory)} of free memory"
    if categories == {"affinity"}:
        return f"every Kaktus {where}is excluded by anti-affinity"
    return f"no eligible Kaktus {where}for {request.name} ({request.vcpus} vCPUs, {_gib(request.memory)})"


def choose_host(request: PlacementRequest, candidates: Iterable[Candidate]) -> Candidate:
    """The eligible candidate with the lowest score (ties: name, then id).

    Raises NoEligibleHost (503) or NoHostCapacity (507) with a reason naming why each host was
    refused, e.g. "no Kaktus in zone z1 has 8 free vCPUs (k1: 4 free vCPUs; k2: 2 free vCPUs)".
    """
    if request.vcpus < 1 or request.memory < 1:
        raise ValueError("a placement request needs positive vcpus and memory")
    pool: Sequence[Candidate] = sorted(candidates, key=lambda c: (c.name, c.id))
    where = f"in {request.scope} " if request.scope else ""
    if not pool:
        raise NoEligibleHost(f"no Kaktus {where}to place {request.name} on")
    eligible: list[Candidate] = []
    refused: list[tuple[Candidate, str, str]] = []
    for c in pool:
        why = refusal(request, c)
        if why is None:
            eligible.append(c)
        else:
            refused.append((c, *why))
    if eligible:
        return min(eligible, key=lambda c: (score(request, c), c.name, c.id))
    categories = {cat for _, cat, _ in refused}
    details = "; ".join(f"{c.name}: {text}" for c, _, text in refused[:10])
    if len(refused) > 10:
        details += f"; and {len(refused) - 10} more"
    reason = f"{_lead(request, where, categories, [t for _, _, t in refused])} ({details})"
    if "down" in categories:
        raise NoEligibleHost(reason)
    raise NoHostCapacity(reason)
