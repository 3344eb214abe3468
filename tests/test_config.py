"""Configuration: upstream files load unchanged; bad values are one clear line and exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kahuna.config import ConfigError, load
from tests.kahuna_proc import ROOT

UPSTREAM = """
global:
  logLevel: INFO
  publicUrl: https://kowabunga.acme.com
  adminEmail: admin@acme.com
  jwt:
    signature: s3cr3t-signature
    lifetimeHours: 24
  http:
    address: 127.0.0.1
    port: 8080
  apiKey: master-key-from-upstream
  db:
    uri: "mongodb://127.0.0.1:27017/?directConnection=true"
    name: kowabunga
  cache:
    enabled: true
    type: memory
    sizeMB: 16
    expirationMinutes: 15
  bootstrap:
    user: kowabunga
    pubkey: "ssh-ed25519 AAAAC3 kowabunga@acme"
  smtp:
    host: smtp.acme.com
    port: 587
    from: "Kowabunga <noreply@acme.com>"
    username: kowabunga
    password: smtp-password
"""


def test_upstream_file_loads_unchanged(tmp_path):
    path = tmp_path / "kahuna.yml"
    path.write_text(UPSTREAM)
    config, unknown = load(path)
    assert unknown == []
    assert config.public_url == "https://kowabunga.acme.com"
    assert config.jwt_signature == "s3cr3t-signature" and config.jwt_lifetime_hours == 24
    assert (config.http.address, config.http.port) == ("127.0.0.1", 8080)
    assert (config.hub.address, config.hub.port) == ("127.0.0.1", 8081)  # ours, defaulted
    assert config.db_uri.startswith("mongodb://") and config.db_name == "kowabunga"
    assert config.cache.enabled and config.cache.expiration_minutes == 15
    assert config.smtp.sender == "Kowabunga <noreply@acme.com>" and config.smtp.port == 587
    assert config.bootstrap_user == "kowabunga"


def test_defaults_without_a_file():
    config, unknown = load(None)
    assert (config.http.port, config.hub.port, config.db_uri) == (8080, 8081, "")
    assert config.api_key == "" and config.jwt_signature == ""  # generated, never defaulted
    assert unknown == []


def test_unknown_keys_are_reported(tmp_path):
    path = tmp_path / "k.yml"
    path.write_text("global:\n  logLevel: INFO\n  colour: blue\n  http: {prot: 1}\n")
    _, unknown = load(path)
    assert unknown == ["global.colour", "global.http.prot"]


@pytest.mark.parametrize("text, message", [
    ("global: {http: {port: 70000}}", "global.http.port: 70000 is out of range"),
    ("global: {http: {port: eighty}}", "global.http.port: expected an integer"),
    ("global: {ws: {port: -1}}", "global.ws.port: -1 is out of range"),
    ("global: {http: {address: not-an-ip}}", "global.http.address"),
    ("global: {logLevel: LOUD}", "global.logLevel"),
    ("global: {cache: {enabled: maybe}}", "global.cache.enabled: expected true or false"),
    ("global: {db: {uri: 'postgres://x'}}", "global.db.uri"),
    ("global: {jwt: {lifetimeHours: 0}}", "global.jwt.lifetimeHours"),
    ("global: [1, 2]", "global: expected a mapping"),
    ("global: {http: {port: 9000}, ws: {port: 9000}}", "global.ws.port"),
    ("cloudinit: {linux: {userData: /nonexistent/user_data.yml}}", "cloudinit.linux.userData"),
    ("global: {publicUrl: kowabunga.acme.com}", "global.publicUrl"),
    ("global: {http: {port: 1}\n", "invalid YAML"),
])
def test_invalid_values_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unreadable_file():
    with pytest.raises(ConfigError, match="cannot read"):
        load("/nonexistent/kahuna.yml")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_cli_exits_2_with_one_line_before_binding(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    path = tmp_path / "bad.yml"
    path.write_text(f"global:\n  http: {{port: {free}}}\n  ws: {{port: 99999}}\n  dataDir: {tmp_path / 'd'}\n")
    proc = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["kahuna: error: global.ws.port: 99999 is out of range [0, 65535]"]
    assert not (tmp_path / "d").exists()  # nothing was created either
    assert _port_is_free(free)


def test_cli_unreadable_config_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "kahuna.py"), "-c", str(tmp_path / "none.yml")],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 2 and "cannot read the configuration file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sample_config_loads():
    config, unknown = load(Path(ROOT / "conf" / "kahuna.yml"))
    assert unknown == [] and config.hub.port == 8081
