"""``python -m benchmarks.client``: see :mod:`benchmarks.client.run`."""

from benchmarks.client.run import main
from benchmarks.common.entry import entry

entry("python -m benchmarks.client", main)
