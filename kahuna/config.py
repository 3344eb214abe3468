"""Typed configuration, built once at start and passed down explicitly.

Reads upstream's `kahuna.yml` keys unchanged (an upstream file must load as it is) plus ours
(`global.ws.*`, `global.dataDir`, a few tunables). Every key has a default except where a default
would be insecure: the master API key and the JWT signature are then *generated* into the data
directory (mode 0600) by `kahuna.secrets_store`, never hard-coded.

Validation happens here, before any port is bound: a wrong type, a port out of range or an
unreadable file raises `ConfigError` with one line that names the key, and the entry point exits 2.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")


class ConfigError(Exception):
    """An invalid configuration; the message is one line naming the key at fault."""


@dataclass(frozen=True)
class Listen:
    address: str
    port: int


@dataclass(frozen=True)
class Smtp:
    host: str = ""
    port: int = 587
    sender: str = ""  # upstream key: `from`
    username: str = ""
    password: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True)
class Cache:
    enabled: bool = True
    type: str = "memory"
    size_mb: int = 16
    expiration_minutes: int = 15

    @property
    def max_entries(self) -> int:
        # upstream sizes its cache in MB; we bound entries, at ~4 KiB per cached document
        return max(64, self.size_mb * 256)


@dataclass(frozen=True)
class Hub:
    address: str = "127.0.0.1"
    port: int = 8081
    ping_interval: float = 9.0
    pong_timeout: float = 10.0
    capabilities_timeout: float = 10.0
    # deadline of an agent call made for an API request (a template download); upstream: 3600 s
    call_timeout: float = 600.0
    max_message_size: int = 16 * 1024 * 1024
    clock_skew: float = 300.0


@dataclass(frozen=True)
class Accounts:
    """User accounts: password policy, mailed-link lifetimes, login throttling (all ours but the
    first, which upstream's docs describe as a policy)."""

    allow_user_chosen_passwords: bool = True  # global.passwords.allowUserChosen
    confirm_link_hours: float = 48.0  # global.accounts.confirmLinkHours
    reset_link_hours: float = 1.0  # global.accounts.resetLinkHours
    login_failures_per_account: int = 5  # global.login.maxFailuresPerAccount
    login_failures_per_address: int = 50  # global.login.maxFailuresPerAddress
    login_window_seconds: float = 900.0  # global.login.windowSeconds


@dataclass(frozen=True)
class Ha:
    """global.ha: the active/passive pair (kahuna.ha). Only on a shared MongoDB store."""

    enabled: bool = False
    node_id: str = ""  # empty: the host name
    lease_seconds: float = 6.0
    renew_seconds: float = 1.0
    # writes are refused once less than this is left of the lease (covers one write's deadline)
    fence_margin_seconds: float = 2.0


@dataclass(frozen=True)
class CloudInit:
    linux: Mapping[str, str] = field(default_factory=dict)
    windows: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Secrets:
    """The three secrets the daemon runs with: configured, or generated into the data
    directory (`kahuna.cli.ensure_secrets`). Defined here, not in kahuna.server, so the entry
    point has them without importing the server's stack (it binds its ports first)."""

    master_key: str
    jwt_signature: str
    server_secret: str


@dataclass(frozen=True)
class Config:
    log_level: str = "INFO"
    public_url: str = "http://127.0.0.1:8080"
    admin_email: str = ""
    jwt_signature: str = ""  # empty: generated into the data directory at start
    jwt_lifetime_hours: int = 24
    http: Listen = Listen("127.0.0.1", 8080)
    hub: Hub = Hub()
    api_key: str = ""  # empty: generated into the data directory at first start
    server_secret: str = ""  # empty: generated into the data directory (share it with the twin)
    db_uri: str = ""  # empty: the embedded store under data_dir
    db_name: str = "kowabunga"
    cache: Cache = Cache()
    bootstrap_user: str = ""
    bootstrap_pubkey: str = ""
    smtp: Smtp = Smtp()
    accounts: Accounts = Accounts()
    # peers whose X-Forwarded-For is believed (the front proxy); others are the client themselves
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    data_dir: Path = Path("data")
    cloudinit: CloudInit = CloudInit()
    # accept upstream's X-Kowabunga-Source-Ip identification (checked against the real source)
    metadata_legacy_headers: bool = True
    ha: Ha = Ha()
    # kMotion cold / instance power cycles: seconds of ACPI shutdown before the domain is destroyed
    kmotion_shutdown_seconds: float = 60.0
    source: str = "(defaults)"

    def with_debug(self) -> "Config":
        return replace(self, log_level="DEBUG")


# ----------------------------------------------------------------------------------------------
# Reading: small typed accessors that name the key when a value is wrong.


class _Section:
    """A YAML mapping with a dotted path, for error messages and unknown-key warnings."""

    def __init__(self, raw: Any, path: str):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(raw).__name__}")
        self.raw = raw
        self.path = path
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def section(self, key: str) -> "_Section":
        return _Section(self.get(key), self._key(key))

    def string(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if value is None:
            return default
        if isinstance(value, (bool, dict, list)):
            raise ConfigError(f"{self._key(key)}: expected a string, got {type(value).__name__}")
        return str(value)

    def integer(self, key: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
            else:
                raise ConfigError(f"{self._key(key)}: expected an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{self._key(key)}: {value} is out of range [{low}, {high}]")
        return value

    def number(self, key: str, default: float, *, low: float = 0.0) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self._key(key)}: expected a number, got {value!r}")
        if value <= low:
            raise ConfigError(f"{self._key(key)}: must be greater than {low}, got {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._key(key)}: expected true or false, got {value!r}")
        return value

    def unknown(self) -> list[str]:
        return [self._key(k) for k in self.raw if k not in self.used]


def _address(section: _Section, key: str, default: str) -> str:
    value = section.string(key, default)
    if value in ("localhost", ""):
        return value or default
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{section._key(key)}: {value!r} is not an IP address") from None
    return value


def _addresses(section: _Section, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = section.get(key, list(default))
    if not isinstance(value, list):
        raise ConfigError(f"{section._key(key)}: expected a list of IP addresses")
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_address(str(item))))
        except ValueError:
            raise ConfigError(f"{section._key(key)}: {item!r} is not an IP address") from None
    return tuple(out)


def _port(section: _Section, key: str, default: int) -> int:
    # 0 asks the OS for a free port (tests, benchmarks); the bound port is logged at start.
    return section.integer(key, default, low=0, high=65535)


def from_mapping(raw: Any, source: str = "(mapping)") -> tuple[Config, list[str]]:
    """Build a Config from parsed YAML; answers the config and the unknown keys it ignored."""
    root = _Section(raw, "")
    glob = root.section("global")
    d = Config()

    level = glob.string("logLevel", d.log_level).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"global.logLevel: {level!r} is not one of {', '.join(LOG_LEVELS)}")

    jwt = glob.section("jwt")
    http = glob.section("http")
    ws = glob.section("ws")
    db = glob.section("db")
    cache = glob.section("cache")
    boot = glob.section("bootstrap")
    smtp = glob.section("smtp")
    passwords = glob.section("passwords")
    accounts = glob.section("accounts")
    login = glob.section("login")
    cloud = root.section("cloudinit")
    metadata = glob.section("metadata")
    ha = glob.section("ha")
    kmotion = glob.section("kmotion")

    public_url = glob.string("publicUrl", d.public_url).rstrip("/")
    if not public_url.startswith(("http://", "https://")):
        raise ConfigError(f"global.publicUrl: {public_url!r} must start with http:// or https://")

    db_uri = db.string("uri", d.db_uri)
    if db_uri and not db_uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError(f"global.db.uri: {db_uri!r} is not a mongodb:// URI")

    cache_type = cache.string("type", d.cache.type)
    if cache_type != "memory":
        raise ConfigError(f"global.cache.type: only 'memory' is supported, got {cache_type!r}")

    cloudinit = CloudInit(
        linux=_cloudinit_paths(cloud.section("linux")),
        windows=_cloudinit_paths(cloud.section("windows")),
    )

    config = Config(
        log_level=level,
        public_url=public_url,
        admin_email=glob.string("adminEmail", d.admin_email),
        jwt_signature=jwt.string("signature", d.jwt_signature),
        jwt_lifetime_hours=jwt.integer("lifetimeHours", d.jwt_lifetime_hours, low=1, high=24 * 365),
        http=Listen(_address(http, "address", d.http.address), _port(http, "port", d.http.port)),
        hub=Hub(
            address=_address(ws, "address", d.hub.address),
            port=_port(ws, "port", d.hub.port),
            ping_interval=ws.number("pingInterval", d.hub.ping_interval),
            pong_timeout=ws.number("pongTimeout", d.hub.pong_timeout),
            capabilities_timeout=ws.number("capabilitiesTimeout", d.hub.capabilities_timeout),
            call_timeout=ws.number("callTimeout", d.hub.call_timeout),
            max_message_size=ws.integer("maxMessageSize", d.hub.max_message_size, low=1024, high=1 << 30),
            clock_skew=ws.number("clockSkew", d.hub.clock_skew),
        ),
        api_key=glob.string("apiKey", d.api_key),
        server_secret=glob.string("serverSecret", d.server_secret),
        db_uri=db_uri,
        db_name=db.string("name", d.db_name),
        cache=Cache(
            enabled=cache.boolean("enabled", d.cache.enabled),
            type=cache_type,
            size_mb=cache.integer("sizeMB", d.cache.size_mb, low=1, high=65536),
            expiration_minutes=cache.integer("expirationMinutes", d.cache.expiration_minutes, low=1),
        ),
        bootstrap_user=boot.string("user", d.bootstrap_user),
        bootstrap_pubkey=boot.string("pubkey", d.bootstrap_pubkey),
        smtp=Smtp(
            host=smtp.string("host", d.smtp.host),
            port=smtp.integer("port", d.smtp.port, low=1, high=65535),
            sender=smtp.string("from", d.smtp.sender),
            username=smtp.string("username", d.smtp.username),
            password=smtp.string("password", d.smtp.password),
        ),
        accounts=Accounts(
            allow_user_chosen_passwords=passwords.boolean("allowUserChosen", d.accounts.allow_user_chosen_passwords),
            confirm_link_hours=accounts.number("confirmLinkHours", d.accounts.confirm_link_hours),
            reset_link_hours=accounts.number("resetLinkHours", d.accounts.reset_link_hours),
            login_failures_per_account=login.integer("maxFailuresPerAccount", d.accounts.login_failures_per_account, low=1),
            login_failures_per_address=login.integer("maxFailuresPerAddress", d.accounts.login_failures_per_address, low=1),
            login_window_seconds=login.number("windowSeconds", d.accounts.login_window_seconds),
        ),
        trusted_proxies=_addresses(http, "trustedProxies", d.trusted_proxies),
        data_dir=Path(glob.string("dataDir", str(d.data_dir))),
        cloudinit=cloudinit,
        metadata_legacy_headers=metadata.boolean("legacyHeaders", d.metadata_legacy_headers),
        ha=_ha(ha, db_uri),
        kmotion_shutdown_seconds=kmotion.number("shutdownTimeout", d.kmotion_shutdown_seconds),
        source=source,
    )
    if config.http.port and config.http.port == config.hub.port and config.http.address == config.hub.address:
        raise ConfigError("global.ws.port: the agent hub cannot share the HTTP port "
                          f"{config.http.port} (route /ws to it in the front proxy instead)")
    unknown = [k for s in (root, glob, jwt, http, ws, db, cache, boot, smtp, passwords, accounts, login, cloud, metadata, ha, kmotion)
               for k in s.unknown()]
    return config, unknown


def _ha(section: _Section, db_uri: str) -> Ha:
    """Any global.ha key asks for a pair; the embedded store is one file on one machine and
    cannot be shared by a twin, so that combination is refused rather than silently single."""
    if not section.raw:
        return Ha()
    if not db_uri:
        raise ConfigError("global.ha: an active/passive pair needs a shared MongoDB store "
                          "(global.db.uri); the embedded store cannot be shared")
    d = Ha()
    lease = section.number("leaseSeconds", d.lease_seconds)
    renew = section.number("renewSeconds", d.renew_seconds)
    margin = section.number("fenceMarginSeconds", d.fence_margin_seconds)
    if renew * 2 > lease:
        raise ConfigError(f"global.ha.renewSeconds: {renew} must be at most half of leaseSeconds ({lease})")
    if margin + renew >= lease:
        raise ConfigError(f"global.ha.fenceMarginSeconds: {margin} + renewSeconds must be below leaseSeconds ({lease})")
    return Ha(enabled=section.boolean("enabled", True), node_id=section.string("nodeId", ""),
              lease_seconds=lease, renew_seconds=renew, fence_margin_seconds=margin)


def _cloudinit_paths(section: _Section) -> dict[str, str]:
    paths = {}
    for key in ("userData", "metaData", "networkConfig"):
        value = section.string(key, "")
        if value:
            if not Path(value).is_file():
                raise ConfigError(f"{section._key(key)}: {value!r} is not a readable file")
            paths[key] = value
    return paths


def load(path: str | Path | None) -> tuple[Config, list[str]]:
    """Read and validate a YAML config file (or the defaults when `path` is None)."""
    if path is None:
        return from_mapping({}, "(defaults)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    return from_mapping(raw, str(path))
