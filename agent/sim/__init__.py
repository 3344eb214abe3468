"""Simulated Kaktus / Kiwi / Kontroller agents for tests, demos and benchmarks."""

from .model import KaktusModel, KiwiModel, KontrollerModel, SimError
from .services import build_agent, handlers_for

__all__ = ["KaktusModel", "KiwiModel", "KontrollerModel", "SimError", "build_agent", "handlers_for"]
