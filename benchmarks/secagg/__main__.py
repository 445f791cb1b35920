"""``python -m benchmarks.secagg``: see :mod:`benchmarks.secagg.run`."""

from benchmarks.common.entry import entry
from benchmarks.secagg.run import main

entry("python -m benchmarks.secagg", main)
