"""Flower runtime: the same rounds as :mod:`fedlora.runtime.simulation`, carried by Flower.

``server_app`` (a ``ServerApp`` whose strategy wraps a fedlora method), ``client_app`` (a
``ClientApp``), ``protocol`` (what a Flower message holds: fedlora's wire bytes as-is, plus
a few scalars), and ``launch`` (``run_flower``: Flower's simulation engine or a SuperLink
deployment from one RunConfig). See docs/flower.md.
"""
