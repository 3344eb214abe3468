"""Imports every module that declares resource kinds, so that the registry is complete."""

from kahuna.resources import agents, compute, dns, identity, network, storage, topology  # noqa: F401
from kahuna.resources import kawaii, konvey, kylo  # noqa: F401
from kahuna.resources import instance, kompute, kwarantine, volume  # noqa: F401
from kahuna.resources import project_net  # noqa: F401  (project subnets, gateways, VRRP ids)


def load() -> None:
    """Nothing to do: importing this module registered the kinds. Called for clarity."""
