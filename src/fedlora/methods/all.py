"""Imports every method module so that each registers itself (one line per method)."""

from fedlora.methods import fedavg  # noqa: F401
