"""RPC surface of the simulated agents: upstream's method catalogue over the in-memory models.

Params and results use Go's field names (PascalCase); `[]byte` fields are base64 strings; sizes
are uint64. A method with an empty Go reply struct answers `{}`. Every type also answers `Echo`
(its params, unchanged) for benchmarks.
"""

from __future__ import annotations

import base64
import inspect
import binascii
from collections.abc import Callable
from typing import Any

from ..sdk import Agent, Handler
from .model import KaktusModel, KiwiModel, KontrollerModel, SimError

_JSON_TYPE = {str: "string", int: "number", bool: "bool", list: "array", dict: "object"}


def _arg(params: dict, name: str, kind: type, default: Any = ...) -> Any:
    """One Go struct field: missing -> the given default (Go's zero value), wrong type -> error."""
    if not isinstance(params, dict):
        raise SimError("json: cannot unmarshal params into Go struct: not an object")
    value = params.get(name, default)
    if value is ...:
        raise SimError(f"missing parameter {name}")
    if value is None:
        return kind()
    if kind is int:
        if type(value) is not int or value < 0:
            raise SimError(f"json: cannot unmarshal {_describe(value)} into Go struct field .{name} of type uint64")
        return value
    if type(value) is not kind:
        raise SimError(f"json: cannot unmarshal {_describe(value)} into Go struct field .{name} "
                       f"of type {_JSON_TYPE.get(kind, kind.__name__)}")
    return value


def _describe(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _bytes(params: dict, name: str) -> bytes:
    raw = _arg(params, name, str, "")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SimError(f"illegal base64 data in field {name}") from None


def _strings(params: dict, name: str) -> list[str]:
    values = _arg(params, name, list, [])
    if not all(type(v) is str for v in values):
        raise SimError(f"json: cannot unmarshal into Go struct field .{name} of type []string")
    return values


def echo(params: Any) -> Any:
    return params


def kaktus_handlers(m: KaktusModel) -> dict[str, Handler]:
    def volume_args(p: dict) -> tuple[str, str]:
        return _arg(p, "Pool", str), _arg(p, "Volume", str)

    def nfs_export(p: dict) -> dict[str, Any]:
        return {"ID": _arg(p, "ID", int), "Name": _arg(p, "Name", str, ""),
                "FS": _arg(p, "FS", str, ""), "Path": _arg(p, "Path", str, ""),
                "Access": _arg(p, "Access", str, ""), "Protocols": _arg(p, "Protocols", list, []),
                "Clients": _strings(p, "Clients"), "Backends": _strings(p, "Backends"),
                "Port": _arg(p, "Port", int, 0)}

    def create_iso(p: dict) -> dict:
        m.create_iso_volume(*volume_args(p), _arg(p, "Size", int), _bytes(p, "Content"))
        return {}

    def update_iso(p: dict) -> dict:
        m.update_iso_volume(*volume_args(p), _arg(p, "Size", int), _bytes(p, "Content"))
        return {}

    def stats(p: dict) -> dict:
        allocated, available, capacity = m.pool_stats(_arg(p, "Pool", str))
        return {"Allocated": allocated, "Available": available, "Capacity": capacity}

    def state(p: dict) -> dict:
        s, reason = m.instance_state(_arg(p, "Name", str))
        return {"State": s, "Reason": reason}

    def subvolume(p: dict) -> dict:
        path, used = m.create_subvolume(_arg(p, "FS", str), _arg(p, "SubVolume", str))
        return {"Path": path, "BytesUsed": used}

    def void(fn: Callable[[dict], Any]) -> Handler:
        def run(p: dict) -> dict:
            fn(p)
            return {}
        return run

    return {
        "NodeCapabilities": lambda p: dict(m.node),
        "CreateInstance": void(lambda p: m.create_instance(_arg(p, "Name", str), _arg(p, "XML", str))),
        "GetInstance": lambda p: {"XML": m.get_instance(_arg(p, "Name", str),
                                                        _arg(p, "Migratable", bool, False))},
        "UpdateInstance": void(lambda p: m.update_instance(_arg(p, "Name", str), _arg(p, "XML", str))),
        "DeleteInstance": void(lambda p: m.delete_instance(_arg(p, "Name", str))),
        "GetInstanceState": state,
        "InstanceIsRunning": lambda p: {"Running": m.is_running(_arg(p, "Name", str))},
        "GetInstanceRemoteConnectionUrl": lambda p: {"URL": m.remote_url(_arg(p, "Name", str))},
        "InstanceOperation": void(lambda p: m.operation(_arg(p, "Name", str), _arg(p, "Action", int))),
        "GetLibvirtEndpoint": lambda p: m.libvirt_endpoint(),
        "MigrateInstance": void(lambda p: m.migrate(_arg(p, "Name", str),
                                                    _arg(p, "DestinationURI", str))),
        "GetStoragePoolStats": stats,
        "CreateRawVolume": void(lambda p: m.create_raw_volume(*volume_args(p), _arg(p, "Size", int))),
        "CreateTemplateVolume": lambda p: {"Size": m.create_template_volume(
            *volume_args(p), _arg(p, "SourceURL", str))},
        "CreateOsVolume": void(lambda p: m.create_os_volume(
            *volume_args(p), _arg(p, "Size", int), _arg(p, "Template", str))),
        "CreateIsoVolume": create_iso,
        "UpdateIsoVolume": update_iso,
        "GetVolumeInfos": lambda p: {"Size": m.volume_size(*volume_args(p))},
        "ResizeVolume": void(lambda p: m.resize_volume(*volume_args(p), _arg(p, "Size", int))),
        "DeleteVolume": void(lambda p: m.delete_volume(*volume_args(p),
                                                       _arg(p, "WithSnapshots", bool, False))),
        "ListFileSystems": lambda p: {"FS": m.list_filesystems()},
        "ListFsSubVolumes": lambda p: {"SubVolumes": m.list_subvolumes(_arg(p, "FS", str))},
        "CreateFsSubVolume": subvolume,
        "DeleteFsSubVolume": void(lambda p: m.delete_subvolume(_arg(p, "FS", str),
                                                               _arg(p, "SubVolume", str))),
        "CreateNfsBackends": void(lambda p: m.create_nfs_backends(nfs_export(p))),
        "UpdateNfsBackends": void(lambda p: m.update_nfs_backends(nfs_export(p))),
        "DeleteNfsBackends": void(lambda p: m.delete_nfs_backends(_arg(p, "ID", int))),
        "Echo": echo,
    }


def kiwi_handlers(m: KiwiModel) -> dict[str, Handler]:
    def reload(p: dict) -> dict:
        domains = _arg(p, "Domains", list, [])
        if not all(isinstance(d, dict) and type(d.get("Name")) is str for d in domains):
            raise SimError("json: cannot unmarshal into Go struct field .Domains of type []KiwiReloadArgsDomain")
        m.reload(domains)
        return {}

    def record(fn: Callable[[str, str, list[str]], None]) -> Handler:
        def run(p: dict) -> dict:
            fn(_arg(p, "Domain", str), _arg(p, "Entry", str), _strings(p, "Addresses"))
            return {}
        return run

    def zone(fn: Callable[[str], None]) -> Handler:
        def run(p: dict) -> dict:
            fn(_arg(p, "Domain", str, ""))
            return {}
        return run

    def delete_record(p: dict) -> dict:
        m.delete_record(_arg(p, "Domain", str), _arg(p, "Entry", str))
        return {}

    return {"Reload": reload, "CreateDnsZone": zone(m.create_zone),
            "DeleteDnsZone": zone(m.delete_zone), "CreateDnsRecord": record(m.create_record),
            "UpdateDnsRecord": record(m.update_record), "DeleteDnsRecord": delete_record,
            "Echo": echo}


def kontroller_handlers(m: KontrollerModel) -> dict[str, Handler]:
    async def reload(p: dict) -> dict:
        result = m.reload()
        if inspect.isawaitable(result):     # the appliance sim fetches its metadata profile
            await result
        return {}
    return {"Reload": reload, "Echo": echo}


def new_model(agent_type: str, sections: dict[str, Any] | None = None) -> Any:
    """A fresh model for `agent_type`, configured from the agent YAML's own sections."""
    sections = sections or {}
    if agent_type == "Kaktus":
        sim = sections.get("sim") or {}
        libvirt = sections.get("libvirt") or {}
        return KaktusModel(node=sim.get("node"), pools=sim.get("pools"),
                           auto_create_pools=sim.get("autoCreatePools", True),
                           libvirt_address=libvirt.get("address", "127.0.0.1"),
                           filesystems=sim.get("fileSystems"),
                           template_sizes=sim.get("templateSizes"),
                           libvirt_port=libvirt.get("port"))
    if agent_type == "Kiwi":
        return KiwiModel()
    if agent_type == "Kontroller":
        return KontrollerModel()
    raise ValueError(f"unknown agent type {agent_type!r}")


def handlers_for(agent_type: str, model: Any) -> dict[str, Handler]:
    return {"Kaktus": kaktus_handlers, "Kiwi": kiwi_handlers,
            "Kontroller": kontroller_handlers}[agent_type](model)


def build_agent(agent_type: str, agent_id: str, key: str, endpoint: str, *, model: Any = None,
                sections: dict[str, Any] | None = None, **agent_kwargs: Any) -> tuple[Agent, Any]:
    """A simulated agent (SDK `Agent` + its model); the model is returned for inspection."""
    if model is None:
        model = new_model(agent_type, sections)
    agent = Agent(agent_type, agent_id, key, endpoint, handlers=handlers_for(agent_type, model),
                  **agent_kwargs)
    return agent, model
