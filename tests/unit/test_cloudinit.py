"""Cloud-init files as cloud-init would read them: YAML that parses, upstream's keys and values,
secrets hashed or absent, operator templates from kahuna.yml, and a digest that moves only when
the content does."""

import base64
import configparser
import fnmatch
from importlib import resources
from pathlib import Path

import pytest
import yaml

from kahuna import config as kconfig
from kahuna.cloudinit import (CloudInitProfile, NetAdapter, TemplateError, controller_url, digest,
                              hash_password, render, templates_from_config, verify_password)

PASSWORD = "Sup3r'$ecret\"pw"
PUBLIC = NetAdapter(mac="da:1e:70:00:00:01", cidr="192.0.2.0/24", addresses=("192.0.2.10",),
                    gateway="192.0.2.1", dns="9.9.9.9")
PRIVATE = NetAdapter(mac="da:1e:70:00:00:02", cidr="10.0.0.0/24", addresses=("10.0.0.5",),
                     gateway="10.0.0.254", dns="10.0.0.53", routes=("10.1.0.0/16",))
PEERING = NetAdapter(mac="da:1e:70:00:00:03", cidr="10.9.0.0/24", addresses=("10.9.0.7",),
                     gateway="10.9.0.1", dns="10.9.0.53", routes=("10.10.0.0/16",))


def profile(**kw):
    base = dict(hostname="web-1", instance_id="65a1b2c3d4e5f60718293a4b", domain="acme.internal",
                region="eu-west", zone="eu-west-a", root_password=PASSWORD, service_user="kowabunga",
                service_user_pubkey="ssh-ed25519 AAAAC3Nza ops@acme",
                metadata_url="https://kahuna.acme.com/latest/meta-data", local_ip="10.0.0.5",
                metadata_token="tok-123", zone_gateway="10.0.0.1", adapters=(PUBLIC, PRIVATE))
    base.update(kw)
    return CloudInitProfile(**base)


def parsed(files):
    assert set(files) == {"user-data", "meta-data", "network-config"}
    return {name: yaml.safe_load(text) for name, text in files.items()}


def test_linux_user_data():
    files = render(profile())
    assert files["user-data"].startswith("#cloud-config\n")
    ud = parsed(files)["user-data"]
    assert ud["ssh_pwauth"] is False and ud["disable_root"] is False
    assert ud["hostname"] == "web-1" and ud["fqdn"] == "web-1.acme.internal"
    assert "qemu-guest-agent" in ud["packages"] and "keepalived" not in ud["packages"]
    root, svc = ud["users"]
    assert root["name"] == "root" and root["lock_passwd"] is False
    assert root["hashed_passwd"].startswith("$6$") and verify_password(PASSWORD, root["hashed_passwd"])
    assert svc["name"] == "kowabunga" and svc["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert svc["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza ops@acme"]
    assert ud["bootcmd"] and "echo web-1 > /etc/hostname" in ud["runcmd"]
    for text in files.values():  # the plaintext never leaves in a Linux ISO
        assert PASSWORD not in text


def test_kw_meta_helper_sends_token_and_falls_back():
    ud = parsed(render(profile()))["user-data"]
    (entry,) = ud["write_files"]
    assert entry["path"] == "/usr/bin/kw-meta" and entry["permissions"] == "0755"
    script = base64.b64decode(entry["content"]).decode()
    assert script.startswith("#!/bin/bash\n")
    assert "ds.meta_data.kowabunga_metadata_token" in script
    assert "X-Kowabunga-Instance-Token: ${KW_TOKEN}" in script
    assert "X-Kowabunga-Source-Ip: ${KW_LOCAL_IP}" in script and "X-Kowabunga-Instance-Id" in script


def test_linux_meta_data():
    md = parsed(render(profile()))["meta-data"]
    assert md == {"availability-zone": "eu-west-a", "cloud-name": "kowabunga",
                  "instance-id": "65a1b2c3d4e5f60718293a4b", "local-hostname": "web-1",
                  "region": "eu-west", "kowabunga_metadata_uri": "https://kahuna.acme.com/latest/meta-data",
                  "kowabunga_local_ip": "10.0.0.5", "kowabunga_metadata_token": "tok-123"}
    no_token = parsed(render(profile(metadata_token="")))["meta-data"]
    assert "kowabunga_metadata_token" not in no_token


def test_appliance_meta_and_user_data():
    files = render(profile(profile="kawaii", controller_url=controller_url("https://kahuna.acme.com"),
                           controller_agent_id="agent-1", controller_agent_token="k" * 64,
                           adapters=(PUBLIC, PRIVATE, PEERING)))
    p = parsed(files)
    md = p["meta-data"]
    assert md["kowabunga_controller_uri"] == "wss://kahuna.acme.com"
    assert md["kowabunga_controller_agent_id"] == "agent-1"
    assert md["kowabunga_controller_agent_token"] == "k" * 64
    ud = p["user-data"]
    assert "keepalived" in ud["packages"] and "bootcmd" not in ud  # kawaii does not wait for itself
    assert "apt-get install -y kowabunga-kawaii-agent" in ud["runcmd"]
    eth = p["network-config"]["ethernets"]
    assert eth["ens4"]["routes"][0] == {"to": "default", "via": "10.0.0.254", "metric": 200}  # kawaii: VLAN gw
    assert "routes" not in eth["ens5"] and "nameservers" not in eth["ens5"]  # peering NIC: bare
    # an ordinary instance carries no controller key
    assert not any(k.startswith("kowabunga_controller") for k in parsed(render(profile()))["meta-data"])


def test_linux_network_config_v2():
    nc = parsed(render(profile()))["network-config"]
    assert nc["version"] == 2
    pub, priv = nc["ethernets"]["ens3"], nc["ethernets"]["ens4"]
    assert pub["match"] == {"macaddress": "da:1e:70:00:00:01"} and pub["dhcp4"] is False
    assert pub["accept-ra"] is False and pub["link-local"] == []
    assert pub["addresses"] == ["192.0.2.10/24"]
    assert pub["routes"] == [{"to": "default", "via": "192.0.2.1", "metric": 100}]
    assert pub["nameservers"] == {"addresses": ["9.9.9.9"]}  # no search domain on a public NIC
    assert priv["match"] == {"macaddress": "da:1e:70:00:00:02"}
    assert priv["addresses"] == ["10.0.0.5/24"]
    assert priv["routes"] == [{"to": "default", "via": "10.0.0.1", "metric": 200},
                              {"to": "10.1.0.0/16", "via": "10.0.0.254"}]
    assert priv["nameservers"] == {"addresses": ["10.0.0.53"], "search": ["acme.internal"]}


def test_public_nic_without_address_and_no_adapters():
    bare = NetAdapter(mac="da:1e:70:00:00:09", cidr="192.0.2.0/24")
    nc = parsed(render(profile(adapters=(bare, PRIVATE))))["network-config"]
    assert nc["ethernets"]["ens3"] == {"match": {"macaddress": "da:1e:70:00:00:09"}, "link-local": [],
                                       "accept-ra": False, "dhcp4": False}
    assert parsed(render(profile(adapters=())))["network-config"] == {"version": 2, "ethernets": {}}


def test_hostile_values_stay_data():
    """A value with newlines or quotes cannot add YAML keys (every value is a quoted scalar)."""
    evil = 'x"\nssh_pwauth: true\n#'
    p = parsed(render(profile(service_user_pubkey=evil, domain='d"\nfoo: 1', zone=evil)))
    assert p["user-data"]["ssh_pwauth"] is False
    assert p["user-data"]["users"][1]["ssh_authorized_keys"] == [evil]
    assert p["meta-data"]["availability-zone"] == evil and "foo" not in p["meta-data"]


def test_any_unicode_value_round_trips_through_yaml():
    tricky = "caf\u00e9 \U0001f600 nel\x85 ls\u2028 del\x7f tab\t bs\\ q\" nul\x00?"
    md = parsed(render(profile(region=tricky)))["meta-data"]
    assert md["region"] == tricky


def test_powershell_literals_resist_every_single_quote():
    """PowerShell ends a single-quoted string at ' and at the typographic single quotes too."""
    pw = "a\u2019; Remove-Item C:\\ -Recurse; \u2018'$x"
    ud = render(profile(os="windows", root_password=pw))["user-data"]
    literal = "'" + pw.replace("'", "''").replace("\u2019", "\u2019\u2019").replace("\u2018", "\u2018\u2018") + "'"
    assert f"-Pass {literal} " in ud


@pytest.mark.parametrize("bad", ["-web", "web 1", "web;reboot", "$(id)", "x" * 64, ""])
def test_hostname_must_be_a_host_name(bad):
    """It lands in shell lines (runcmd) and PowerShell: refuse anything but RFC 1123 labels."""
    with pytest.raises(ValueError, match="host name"):
        profile(hostname=bad)


def test_windows_variant():
    files = render(profile(os="windows"))
    p = {k: yaml.safe_load(files[k]) for k in ("meta-data", "network-config")}
    assert p["meta-data"]["instance-id"] == "web-1" and p["meta-data"]["hostname"] == "web-1"
    assert p["meta-data"]["kowabunga_metadata_token"] == "tok-123"
    nc = p["network-config"]
    assert nc["version"] == 1
    first, second = nc["config"]
    assert first["name"] == "interface0" and first["mac_address"] == "da:1e:70:00:00:01"
    assert first["subnets"][0] == {"type": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1",
                                   "dns_nameservers": ["9.9.9.9"]}
    assert second["subnets"][0]["gateway"] == "10.0.0.1" and second["mtu"] == 1450
    ud = files["user-data"]
    assert "<powershell>" in ud and "</powershell>" in ud
    # single-quoted PowerShell literals: quotes doubled, `$` not expanded
    assert "-Pass 'Sup3r''$ecret\"pw'" in ud
    assert "New-NetRoute -DestinationPrefix '10.1.0.0/16' -InterfaceIndex $ADAPTER_ID.ifIndex -NextHop '10.0.0.254'" in ud
    with pytest.raises(TemplateError, match="plaintext"):
        render(profile(os="windows", root_password="", root_password_hash=hash_password("x")))


def test_digest_is_stable_with_a_stored_hash():
    h = hash_password(PASSWORD)
    a, b = render(profile(root_password_hash=h)), render(profile(root_password_hash=h))
    assert a == b and digest(a) == digest(b)
    assert digest(render(profile(root_password_hash=h, metadata_token="tok-rotated"))) != digest(a)
    assert digest(render(profile(root_password_hash=h, local_ip="10.0.0.6"))) != digest(a)


def test_operator_templates_from_kahuna_yml(tmp_path):
    meta = tmp_path / "meta.j2"
    meta.write_text("instance-id: {{ InstanceID | yq }}\nmy_site: {{ Zone | yq }}\ntoken: {{ MetadataToken | yq }}\n")
    cfg_file = tmp_path / "kahuna.yml"
    cfg_file.write_text(yaml.safe_dump({"cloudinit": {"linux": {"metaData": str(meta)}}}))
    cfg, _unknown = kconfig.load(cfg_file)
    overrides = templates_from_config(cfg.cloudinit, "linux")
    assert set(overrides) == {"meta-data"}
    files = render(profile(), overrides)
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "65a1b2c3d4e5f60718293a4b",
                                                  "my_site": "eu-west-a", "token": "tok-123"}
    assert yaml.safe_load(files["user-data"])["hostname"] == "web-1"  # others: shipped templates
    assert templates_from_config(cfg.cloudinit, "windows") == {}


def test_broken_override_names_the_file():
    with pytest.raises(TemplateError, match="linux network-config template"):
        render(profile(), {"network-config": "{{ NoSuchVariable }}"})
    with pytest.raises(TemplateError, match="meta-data"):
        render(profile(), {"meta-data": "{% if %}"})


def test_profile_validation():
    with pytest.raises(ValueError):
        profile(os="plan9")
    with pytest.raises(ValueError):
        profile(profile="kylo")
    assert PASSWORD not in repr(profile()) and "tok-123" not in repr(profile())


def test_templates_ship_as_package_data():
    """setup.cfg's package_data globs cover every template file, so a non-editable install has them."""
    root = Path(str(resources.files("kahuna.cloudinit")))
    shipped = sorted(str(p.relative_to(root)) for p in (root / "templates").rglob("*") if p.is_file())
    assert len(shipped) == 7  # 2 OS x 3 files + kw-meta.sh
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    globs = [g.strip() for g in cfg["options.package_data"]["kahuna.cloudinit"].split(",")]
    for rel in shipped:
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel
