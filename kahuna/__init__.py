"""Kahuna: the orchestrator of the Kowabunga private cloud, re-created on trio."""

__version__ = "0.1.0"
