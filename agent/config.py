"""Agent configuration: upstream's YAML (`global: {logLevel, id, endpoint, apiKey}` + sections).

Our additions live under `global` too and are optional: `auth` (`hmac`, the default, or `key` for
upstream's header), `caFile` (extra CA bundle for a wss:// endpoint with a private CA).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .sdk import normalize_endpoint

LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING,
              "WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


@dataclass
class AgentConfig:
    agent_id: str
    endpoint: str           # normalized ws[s]://…/ws
    api_key: str
    log_level: str = "INFO"
    auth: str = "hmac"
    ca_file: str | None = None
    sections: dict[str, Any] = field(default_factory=dict)   # everything outside `global`

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.endpoint.startswith("wss://"):
            return None
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(self.ca_file)
        return context

    def logging_level(self) -> int:
        return LOG_LEVELS.get(self.log_level.upper(), logging.INFO)


def parse_config(doc: Any) -> AgentConfig:
    if not isinstance(doc, dict) or not isinstance(doc.get("global"), dict):
        raise ValueError("agent config needs a 'global' section")
    g = doc["global"]
    missing = [k for k in ("id", "endpoint", "apiKey") if not g.get(k)]
    if missing:
        raise ValueError(f"agent config: global.{', global.'.join(missing)} missing")
    auth = str(g.get("auth", "hmac")).lower()
    if auth not in ("hmac", "key"):
        raise ValueError("agent config: global.auth must be 'hmac' or 'key'")
    return AgentConfig(agent_id=str(g["id"]), endpoint=normalize_endpoint(str(g["endpoint"])),
                       api_key=str(g["apiKey"]), log_level=str(g.get("logLevel", "INFO")),
                       auth=auth, ca_file=g.get("caFile"),
                       sections={k: v for k, v in doc.items() if k != "global"})


def load_config(path: str | Path) -> AgentConfig:
    with open(path, encoding="utf-8") as f:
        return parse_config(yaml.safe_load(f))
