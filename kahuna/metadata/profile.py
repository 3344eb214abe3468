"""The metadata profile of one instance: upstream's `metadata.InstanceMetadata` JSON.

Computed from the store at every read (never cached), so a firewall rule, IPsec peer or backend
changed through the API is what the appliance sees at its next Reload. Secrets (IPsec pre-shared
keys) only ever enter the `kawaii` part, and that part is only built for the Kawaii appliance
instance itself (`profile == "kawaii"` and `profile_id` naming its Kawaii); an ordinary instance's
profile is the base fields alone. Kontroller agent credentials are not in this JSON at all (they
travel on the appliance's own cloud-init ISO, as upstream does). Nothing here is logged.
"""

from __future__ import annotations

from typing import Any, Mapping

from kahuna.metadata.identify import instance_region
from kahuna.resources.appliance_fields import dh_group_name
from kahuna.resources.ipsec_psk import open_psk
from kahuna.store import errors as store_errors
from kahuna.store.base import is_valid_id

GiB = 1 << 30

BASE_FIELDS = ("instance-id", "local-hostname", "description", "kaktus", "vcpu", "mem_gb",
               "local-ipv4", "subnet_cidr", "template", "monthly_cost", "project", "domain",
               "zone", "region", "tags", "peers")
KAWAII_FIELDS = ("public_interface", "private_interface", "peering_interfaces",
                 "vrrp_control_interface", "public_vip_addresses", "public_gw_address",
                 "virtual_ips", "fw_input_default", "fw_output_default", "fw_forward_default",
                 "fw_input_extra_networks", "fw_input_rules", "fw_output_rules", "fw_forward_rules",
                 "fw_nat_rules", "ipsec_connections")
KONVEY_FIELDS = ("private_interface", "vrrp_control_interface", "virtual_ips", "endpoints")
IPSEC_FIELDS = ("name", "ip", "xfrm_id", "remote_peer", "remote_subnet", "pre_shared_key",
                "dpd_timeout", "dpd_action", "start_action", "rekey", "phase1_lifetime",
                "phase1_df_group", "phase1_integrity_algorithm", "phase1_encryption_algorithm",
                "phase2_lifetime", "phase2_df_group", "phase2_integrity_algorithm",
                "phase2_encryption_algorithm", "ingress_rules")

async def _get(store, collection: str, doc_id: Any) -> dict[str, Any]:
    if not is_valid_id(doc_id):
        return {}
    try:
        return await store.get(collection, doc_id)
    except store_errors.NotFound:
        return {}


def _name(doc: Mapping[str, Any]) -> str:
    return str(doc.get("name") or "")


async def build(store, instance: Mapping[str, Any], *, server_secret: str = "") -> dict[str, Any]:
    """The profile of `instance`; `server_secret` opens sealed IPsec pre-shared keys."""
    project = await _get(store, "project", instance.get("project_id"))
    kaktus = await _get(store, "kaktus", instance.get("kaktus_id"))
    zone = await _get(store, "zone", instance.get("zone_id") or kaktus.get("zone_id"))
    region_id = await instance_region(store, instance)
    region = await _get(store, "region", region_id)
    subnets = project.get("private_subnets") or {}
    subnet = await _get(store, "subnet", subnets.get(region_id) if isinstance(subnets, dict) else None)
    cost = instance.get("cost") or {}
    out: dict[str, Any] = {
        "instance-id": str(instance["_id"]),
        "local-hostname": _name(instance),
        "description": str(instance.get("description") or ""),
        "kaktus": _name(kaktus),
        "vcpu": int(instance.get("vcpus") or 0),
        "mem_gb": int(instance.get("memory") or 0) // GiB,
        "local-ipv4": str(instance.get("local_ip") or ""),
        "subnet_cidr": str(subnet.get("cidr") or ""),
        "template": await _template_name(store, instance),
        "monthly_cost": f"{float(cost.get('price') or 0.0):f} {cost.get('currency') or 'EUR'}",
        "project": _name(project),
        "domain": str(project.get("domain") or ""),
        "zone": _name(zone),
        "region": _name(region),
        "tags": [str(t) for t in project.get("tags") or []],
        "peers": [],
    }
    profile = instance.get("profile")
    if profile == "kawaii":
        kawaii = await _get(store, "kawaii", instance.get("profile_id"))
        if kawaii and kawaii.get("project_id") == instance.get("project_id"):
            out["kawaii"] = await _kawaii(store, kawaii, zone, subnet, server_secret)
            out["peers"] = await _peers(store, kawaii, instance)
    elif profile == "konvey":
        konvey = await _get(store, "konvey", instance.get("profile_id"))
        if konvey and konvey.get("project_id") == instance.get("project_id"):
            out["konvey"] = _konvey(konvey, subnet)
            out["peers"] = await _peers(store, konvey, instance)
    return out


async def _template_name(store, instance: Mapping[str, Any]) -> str:
    for volume_id in instance.get("volume_ids") or []:
        volume = await _get(store, "volume", volume_id)
        if volume.get("type") == "os":
            return _name(await _get(store, "template", volume.get("template_id")))
    return ""


async def _peers(store, appliance: Mapping[str, Any], instance: Mapping[str, Any]) -> list[str]:
    """The other appliance instances' private addresses (upstream: the other MZR members)."""
    ids = list(appliance.get("instance_ids") or [])
    for kompute_id in appliance.get("kompute_ids") or []:
        kompute = await _get(store, "kompute", kompute_id)
        if kompute.get("instance_id"):
            ids.append(kompute["instance_id"])
    peers = []
    for instance_id in ids:
        if instance_id == instance["_id"]:
            continue
        other = await _get(store, "instance", instance_id)
        if other.get("local_ip"):
            peers.append(other["local_ip"])
    return sorted(set(peers))


def _mask(cidr: Any) -> int:
    try:
        return int(str(cidr).split("/", 1)[1])
    except (IndexError, ValueError):
        return 0


def _vip(vrrp_id, interface, vip, priority, mask, public) -> dict[str, Any]:
    return {"vrrp_id": int(vrrp_id or 0), "interface": interface, "vip": str(vip or ""),
            "priority": int(priority), "mask": int(mask or 0), "public": bool(public)}


async def _kawaii_vips(store, kawaii: Mapping[str, Any], zone_id: Any, public_subnet) -> list[dict[str, Any]]:
    """Stored `virtual_ips` when the document has them, else one public VIP per zone from the
    zone's public VIP adapter and VRRP id; priority 150 for the appliance's own zone."""
    if kawaii.get("virtual_ips"):
        return [_vip(v.get("vrrp_id"), str(v.get("interface") or ""), v.get("vip"),
                     150 if zone_id and v.get("zone_id") == zone_id else v.get("priority") or 100,
                     v.get("mask"), v.get("public")) for v in kawaii["virtual_ips"]]
    adapters = kawaii.get("public_adapter_ids") or {}
    vrrp_ids = kawaii.get("vrrp_ids") or {}
    out = []
    if isinstance(adapters, dict):
        for vip_zone, adapter_id in sorted(adapters.items()):
            adapter = await _get(store, "adapter", adapter_id)
            for address in adapter.get("addresses") or []:
                out.append(_vip(vrrp_ids.get(vip_zone), "ens3", address, 150 if vip_zone == zone_id else 100,
                                _mask(public_subnet.get("cidr")), True))
    return out


def _rule(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v not in (None, "") or k in ("protocol", "ports", "action")}


def _public_vips(kawaii: Mapping[str, Any]) -> list[str]:
    for key in ("public_vips", "public_vip_addresses", "public_ips"):
        if kawaii.get(key):
            return sorted(a for a in kawaii[key] if isinstance(a, str))
    return sorted(a for a in (kawaii.get("netip") or {}).get("public") or [] if isinstance(a, str))


async def _kawaii(store, kawaii: Mapping[str, Any], zone, subnet, server_secret: str) -> dict[str, Any]:
    public = _public_vips(kawaii)
    public_subnet = await _get(store, "subnet", kawaii.get("public_subnet_id"))
    firewall = kawaii.get("firewall") or {}
    ingress = firewall.get("ingress") or []
    egress = firewall.get("egress") or []
    peerings = kawaii.get("vpc_peerings") or []
    fw_in = [_rule(iifname="ens3", oifname="ens3", source_ip=r.get("source") or "0.0.0.0/0",
                   destination_ip=vip, protocol=r.get("protocol") or "tcp", ports=str(r.get("ports") or ""),
                   action="accept") for vip in public for r in ingress]
    fw_out = [_rule(oifname="ens3", source_ip="0.0.0.0/0", protocol=r.get("protocol") or "tcp",
                    ports=str(r.get("ports") or ""), action="drop") for vip in public for r in egress]
    nat = [{"private_ip": str(r.get("destination") or ""), "public_ip": vip,
            "protocol": str(r.get("protocol") or "tcp"), "ports": str(r.get("ports") or "")}
           for vip in public for r in kawaii.get("dnat") or kawaii.get("dnat_rules") or []]
    ipsecs = []
    for collection in ("kawaii_ipsec", "ipsec"):
        for doc in await store.find(collection, {"kawaii_id": kawaii["_id"]}, sort="_id"):
            ipsecs.append(_ipsec(doc, server_secret))
    return {
        "public_interface": "ens3",
        "private_interface": "ens4",
        "peering_interfaces": [f"ens{5 + i}" for i in range(len(peerings))],
        "vrrp_control_interface": "ens4",
        "public_vip_addresses": public,
        "public_gw_address": str(public_subnet.get("gateway") or ""),
        "virtual_ips": await _kawaii_vips(store, kawaii, zone.get("_id"), public_subnet),
        "fw_input_default": "drop",
        "fw_output_default": str(firewall.get("egress_policy") or "accept"),
        "fw_forward_default": "drop",
        "fw_input_extra_networks": list(subnet.get("routes") or []),
        "fw_input_rules": fw_in,
        "fw_output_rules": fw_out,
        "fw_forward_rules": [],
        "fw_nat_rules": nat,
        "ipsec_connections": ipsecs,
    }


def _dh(value: Any) -> str:
    try:
        return dh_group_name(int(value))
    except (TypeError, ValueError):
        return str(value or "")


def _psk(doc: Mapping[str, Any], server_secret: str) -> str:
    """The clear PSK: sealed by the services' IPsec kind (opened the same way), or in clear in
    documents migrated from upstream."""
    if doc.get("pre_shared_key"):
        return str(doc["pre_shared_key"])
    return open_psk(server_secret, dict(doc)) if server_secret else ""


def _ipsec(doc: Mapping[str, Any], server_secret: str) -> dict[str, Any]:
    out = {key: doc.get(key, "") for key in IPSEC_FIELDS}
    out["xfrm_id"] = int(doc.get("xfrm_id") or 0)
    out["remote_peer"] = str(doc.get("remote_peer") or doc.get("remote_ip") or "")
    out["pre_shared_key"] = _psk(doc, server_secret)
    out["dpd_action"] = str(doc.get("dpd_action") or doc.get("dpd_timeout_action") or "")
    out["rekey"] = str(doc.get("rekey") or doc.get("rekey_time") or "")
    for phase in ("phase1", "phase2"):
        out[f"{phase}_df_group"] = _dh(doc.get(f"{phase}_df_group") or doc.get(f"{phase}_dh_group_number"))
    out["ingress_rules"] = [_rule(source_ip=r.get("source") or "0.0.0.0/0", protocol=r.get("protocol") or "tcp",
                                  direction="in", ports=str(r.get("ports") or ""), action="accept")
                            for r in doc.get("ingress_rules") or doc.get("firewall", {}).get("ingress") or []]
    return out


def _konvey(konvey: Mapping[str, Any], subnet: Mapping[str, Any]) -> dict[str, Any]:
    endpoints = []
    for ep in konvey.get("endpoints") or []:
        backends = ep.get("backends") or {}
        hosts = backends.get("hosts") if isinstance(backends, dict) else None
        port = int(backends.get("port") or 0) if isinstance(backends, dict) else 0
        items = ([{"host": str(h), "port": port} for h in hosts or []] if hosts is not None
                 else [{"host": str(b.get("host")), "port": int(b.get("port") or 0)} for b in backends
                       if isinstance(b, dict)])
        endpoints.append({"name": str(ep.get("name") or ""), "port": int(ep.get("port") or 0),
                          "protocol": str(ep.get("protocol") or "tcp"), "backends": items})
    return {"private_interface": "ens4", "vrrp_control_interface": "ens4",
            "virtual_ips": [_vip(konvey.get("vrrp_id"), "ens4", konvey["vip"], 100, _mask(subnet.get("cidr")), False)]
            if konvey.get("vip") else [], "endpoints": endpoints}
