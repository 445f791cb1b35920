"""``python -m benchmarks.server``: see :mod:`benchmarks.server.run`."""

from benchmarks.common.entry import entry
from benchmarks.server.run import main

entry("python -m benchmarks.server", main)
