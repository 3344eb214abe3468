"""The metadata profile of one instance: upstream's `metadata.InstanceMetadata` JSON.

Computed from the store at every read (never cached), so a firewall rule, IPsec peer or backend
changed through the API is what the appliance sees at its next Reload. The appliance parts
(`kawaii{…}`, `konvey{…}`, `peers`) are built only for the appliance instance itself: its
`profile` ("kawaii"/"konvey", set by the Kompute flow, never by a user) and `profile_id` naming
an appliance document *of the same project*. That is where the secrets and VRRP data live (IPsec
pre-shared keys, opened from their sealed form here, VRRP ids and VIPs); an ordinary instance's
profile is the base fields alone. Kontroller agent credentials are not in this JSON at all (they
travel on the appliance's own cloud-init ISO, as upstream does). Nothing here is logged.

Document shapes: /tmp/team/interfaces.md "appliance" (kawaii, ipsec, konvey), upstream-tenant.md
§10 for the output. Where upstream's output has a hole we do not copy it:
- egress rules: upstream always writes `drop`, whatever the egress policy; here a rule is the
  exception to its policy (`accept` under a `drop` policy, `drop` under `accept`), as upstream
  already does for VPC peering rules, and it names its destination.
- Konvey: upstream compares a Kompute id with an instance id, so no appliance is ever master
  (priority 100 everywhere); here the first appliance of the Konvey gets 150.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from kahuna.metadata.identify import APPLIANCES, get_doc, instance_region
from kahuna.resources.appliance_fields import dh_group_name
from kahuna.resources.cost import instance_cost
from kahuna.resources.ipsec_psk import open_psk

GiB = 1 << 30
PUBLIC_IF, PRIVATE_IF = "ens3", "ens4"
MASTER, BACKUP = 150, 100

BASE_FIELDS = ("instance-id", "local-hostname", "description", "kaktus", "vcpu", "mem_gb",
               "local-ipv4", "subnet_cidr", "template", "monthly_cost", "project", "domain",
               "zone", "region", "tags", "peers")
KAWAII_FIELDS = ("public_interface", "private_interface", "peering_interfaces",
                 "vrrp_control_interface", "public_vip_addresses", "public_gw_address",
                 "virtual_ips", "fw_input_default", "fw_output_default", "fw_forward_default",
                 "fw_input_extra_networks", "fw_input_rules", "fw_output_rules", "fw_forward_rules",
                 "fw_nat_rules", "ipsec_connections")
KONVEY_FIELDS = ("private_interface", "vrrp_control_interface", "virtual_ips", "endpoints")
VIP_FIELDS = ("vrrp_id", "interface", "vip", "priority", "mask", "public")
NAT_FIELDS = ("private_ip", "public_ip", "protocol", "ports")
IPSEC_FIELDS = ("name", "ip", "xfrm_id", "remote_peer", "remote_subnet", "pre_shared_key",
                "dpd_timeout", "dpd_action", "start_action", "rekey", "phase1_lifetime",
                "phase1_df_group", "phase1_integrity_algorithm", "phase1_encryption_algorithm",
                "phase2_lifetime", "phase2_df_group", "phase2_integrity_algorithm",
                "phase2_encryption_algorithm", "ingress_rules")
# a firewall rule: the optional keys are omitted when empty (upstream's `omitempty`)
RULE_OPTIONAL = ("iifname", "oifname", "source_ip", "destination_ip", "direction")
RULE_FIELDS = RULE_OPTIONAL + ("protocol", "ports", "action")
ANYWHERE = "0.0.0.0/0"

Doc = Mapping[str, Any]


def _name(doc: Doc) -> str:
    return str(doc.get("name") or "")


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


async def build(res, instance: Doc, *, server_secret: str = "") -> dict[str, Any]:
    """The profile of `instance` (`res`: the resources service); `server_secret` opens sealed
    IPsec pre-shared keys."""
    store = res.store
    project = await get_doc(store, "project", instance.get("project_id"))
    kaktus = await get_doc(store, "kaktus", instance.get("kaktus_id"))
    zone_id = instance.get("zone_id") or kaktus.get("zone_id")
    zone = await get_doc(store, "zone", zone_id)
    region_id = await instance_region(store, instance)
    region = await get_doc(store, "region", region_id)
    subnet = await _private_subnet(store, project, region_id)
    cost = await instance_cost(res, {**instance, "zone_id": zone_id})
    out: dict[str, Any] = {
        "instance-id": str(instance["_id"]),
        "local-hostname": _name(instance),
        "description": _str(instance.get("description")),
        "kaktus": _name(kaktus),
        "vcpu": _int(instance.get("vcpus")),
        "mem_gb": _int(instance.get("memory")) // GiB,
        "local-ipv4": await local_ip(store, instance),
        "subnet_cidr": _str(subnet.get("cidr")),
        "template": await _template_name(store, instance),
        "monthly_cost": f"{float(cost['price']):f} {cost['currency']}",  # from the current Kaktus prices
        "project": _name(project),
        "domain": _str(project.get("domain")),
        "zone": _name(zone),
        "region": _name(region),
        "tags": [str(t) for t in project.get("tags") or []],
        "peers": [],
    }
    appliance = await owned_appliance(store, instance)
    if appliance is None:
        return out
    kind, doc = appliance
    out["peers"] = await _peers(store, doc, instance)
    if kind == "kawaii":
        out["kawaii"] = await _kawaii(store, doc, zone_id, subnet, server_secret)
    else:
        out["konvey"] = await _konvey(store, doc, instance, subnet)
    return out


async def owned_appliance(store, instance: Doc) -> tuple[str, dict[str, Any]] | None:
    """("kawaii"|"konvey", its document) when `instance` is one of that appliance's instances
    of the same project; else None (no appliance part, no secret)."""
    kind = instance.get("profile")
    if kind not in APPLIANCES:
        return None
    doc = await get_doc(store, kind, instance.get("profile_id"))
    if not doc or not doc.get("project_id") or doc.get("project_id") != instance.get("project_id"):
        return None
    return kind, doc


async def _private_subnet(store, project: Doc, region_id: Any) -> dict[str, Any]:
    subnets = project.get("private_subnets") or {}
    return await get_doc(store, "subnet", subnets.get(region_id) if isinstance(subnets, dict) else None)


async def local_ip(store, instance: Doc) -> str:
    """The instance's private address: its `local_ip`, else the first address of its first
    adapter on a private subnet (adapters are kept private first)."""
    if instance.get("local_ip"):
        return str(instance["local_ip"])
    for adapter_id in instance.get("adapter_ids") or ():
        adapter = await get_doc(store, "adapter", adapter_id)
        for address in adapter.get("addresses") or ():
            try:
                if ipaddress.ip_address(address).is_private:
                    return str(address)
            except ValueError:
                continue
    return ""


async def _template_name(store, instance: Doc) -> str:
    for volume_id in instance.get("volume_ids") or []:
        volume = await get_doc(store, "volume", volume_id)
        if volume.get("type") == "os":
            return _name(await get_doc(store, "template", volume.get("template_id")))
    return ""


def _appliance_instance_ids(appliance: Doc) -> list[str]:
    return [str(a["instance_id"]) for a in appliance.get("appliances") or () if a.get("instance_id")]


async def _peers(store, appliance: Doc, instance: Doc) -> list[str]:
    """The other appliance instances' private addresses (upstream: the other MZR members)."""
    peers = set()
    for instance_id in _appliance_instance_ids(appliance):
        if instance_id == str(instance["_id"]):
            continue
        address = await local_ip(store, await get_doc(store, "instance", instance_id))
        if address:
            peers.add(address)
    return sorted(peers)


def _mask(cidr: Any) -> int:
    try:
        return ipaddress.ip_network(str(cidr), strict=False).prefixlen
    except ValueError:
        return 0


def vip(vrrp_id: Any, interface: str, address: Any, priority: int, mask: Any, public: bool) -> dict[str, Any]:
    return {"vrrp_id": _int(vrrp_id), "interface": interface, "vip": _str(address),
            "priority": int(priority), "mask": _int(mask), "public": bool(public)}


def rule(*, protocol: Any, ports: Any, action: str, **optional: Any) -> dict[str, Any]:
    out = {k: str(optional[k]) for k in RULE_OPTIONAL if optional.get(k)}
    out.update(protocol=_str(protocol) or "tcp", ports=_str(ports), action=action)
    return out


def _except(policy: Any) -> str:
    """The action of a rule under a default policy: the rule is the exception to it."""
    return "drop" if _str(policy) == "accept" else "accept"


async def _kawaii(store, kawaii: Doc, zone_id: Any, subnet: Doc, server_secret: str) -> dict[str, Any]:
    public = sorted(str(a) for a in kawaii.get("public_vips") or () if a)
    public_subnet = await get_doc(store, "subnet", kawaii.get("public_subnet_id"))
    firewall = kawaii.get("firewall") or {}
    policy = _str(firewall.get("egress_policy")) or "accept"
    fw_in = [rule(iifname=PUBLIC_IF, oifname=PUBLIC_IF, source_ip=r.get("source") or ANYWHERE,
                  destination_ip=address, protocol=r.get("protocol"), ports=r.get("ports"), action="accept")
             for address in public for r in firewall.get("ingress") or ()]
    fw_out = [rule(oifname=PUBLIC_IF, source_ip=ANYWHERE, destination_ip=r.get("destination") or ANYWHERE,
                   protocol=r.get("protocol"), ports=r.get("ports"), action=_except(policy))
              for address in public for r in firewall.get("egress") or ()]
    nat = [{"private_ip": _str(r.get("destination")), "public_ip": address,
            "protocol": _str(r.get("protocol")) or "tcp", "ports": _str(r.get("ports"))}
           for address in public for r in kawaii.get("dnat_rules") or ()]
    peerings = list(kawaii.get("vpc_peerings") or ())
    ipsecs = [_ipsec(doc, server_secret)
              for doc in await store.find("ipsec", {"kawaii_id": kawaii["_id"]}, sort="_id")]
    return {
        "public_interface": PUBLIC_IF,
        "private_interface": PRIVATE_IF,
        "peering_interfaces": [_peering_if(i) for i in range(len(peerings))],
        "vrrp_control_interface": PRIVATE_IF,
        "public_vip_addresses": public,
        "public_gw_address": _str(public_subnet.get("gateway")),
        "virtual_ips": [vip(v.get("vrrp_id"), _str(v.get("interface")), v.get("vip"),
                            MASTER if zone_id and v.get("zone_id") == zone_id else BACKUP,
                            v.get("mask"), v.get("public")) for v in kawaii.get("virtual_ips") or ()],
        "fw_input_default": "drop",
        "fw_output_default": policy,
        "fw_forward_default": "drop",
        "fw_input_extra_networks": [str(r) for r in subnet.get("routes") or ()],
        "fw_input_rules": fw_in,
        "fw_output_rules": fw_out,
        "fw_forward_rules": await _forward_rules(store, peerings, subnet),
        "fw_nat_rules": nat,
        "ipsec_connections": ipsecs,
    }


def _peering_if(index: int) -> str:
    return f"ens{5 + index}"


async def _forward_rules(store, peerings: list[Doc], subnet: Doc) -> list[dict[str, Any]]:
    """Per VPC peering (interface ens5+i): its ingress rules from the project's network to the
    peer (direction out), its egress rules from the peer back (direction in); each the exception
    to the peering's policy."""
    out = []
    private = _str(subnet.get("cidr"))
    for i, peering in enumerate(peerings):
        iface = _peering_if(i)
        peer = _str((await get_doc(store, "subnet", peering.get("subnet"))).get("cidr"))
        action = _except(peering.get("policy") or "drop")
        for r in peering.get("ingress") or ():
            out.append(rule(iifname=PRIVATE_IF, oifname=iface, source_ip=private, destination_ip=peer,
                            direction="out", protocol=r.get("protocol"), ports=r.get("ports"), action=action))
        for r in peering.get("egress") or ():
            out.append(rule(iifname=iface, oifname=PRIVATE_IF, source_ip=peer, destination_ip=private,
                            direction="in", protocol=r.get("protocol"), ports=r.get("ports"), action=action))
    return out


def _dh(value: Any) -> str:
    try:
        return dh_group_name(int(value))
    except (TypeError, ValueError):
        return ""


def _ipsec(doc: Doc, server_secret: str) -> dict[str, Any]:
    """One connection, the pre-shared key opened from its sealed form (appliance profile only)."""
    return {
        "name": _name(doc),
        "ip": _str(doc.get("ip")),
        "xfrm_id": _int(doc.get("xfrm_id")),
        "remote_peer": _str(doc.get("remote_ip")),
        "remote_subnet": _str(doc.get("remote_subnet")),
        "pre_shared_key": open_psk(server_secret, dict(doc)) if server_secret else "",
        "dpd_timeout": _str(doc.get("dpd_timeout")),
        "dpd_action": _str(doc.get("dpd_timeout_action")),
        "start_action": _str(doc.get("start_action")),
        "rekey": _str(doc.get("rekey_time")),
        **{f"{phase}_{key}": _str(doc.get(f"{phase}_{key}")) for phase in ("phase1", "phase2")
           for key in ("lifetime", "integrity_algorithm", "encryption_algorithm")},
        "phase1_df_group": _dh(doc.get("phase1_dh_group_number")),
        "phase2_df_group": _dh(doc.get("phase2_dh_group_number")),
        "ingress_rules": [rule(source_ip=r.get("source") or ANYWHERE, direction="in", protocol=r.get("protocol"),
                               ports=r.get("ports"), action="accept")
                          for r in (doc.get("firewall") or {}).get("ingress") or ()],
    }


async def _konvey(store, konvey: Doc, instance: Doc, project_subnet: Doc) -> dict[str, Any]:
    subnet = await get_doc(store, "subnet", konvey.get("subnet_id")) or project_subnet
    members = _appliance_instance_ids(konvey)
    priority = MASTER if members and members[0] == str(instance["_id"]) else BACKUP
    endpoints = []
    for ep in konvey.get("endpoints") or ():
        backends = ep.get("backends") or {}
        port = _int(backends.get("port"))
        endpoints.append({"name": _name(ep), "port": _int(ep.get("port")),
                          "protocol": _str(ep.get("protocol")) or "tcp",
                          "backends": [{"host": str(h), "port": port} for h in backends.get("hosts") or ()]})
    vips = [vip(konvey.get("vrrp_id"), PRIVATE_IF, konvey["vip"], priority, _mask(subnet.get("cidr")), False)] \
        if konvey.get("vip") else []
    return {"private_interface": PRIVATE_IF, "vrrp_control_interface": PRIVATE_IF,
            "virtual_ips": vips, "endpoints": endpoints}
