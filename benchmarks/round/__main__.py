"""``python -m benchmarks.round``: see :mod:`benchmarks.round.run`."""

from benchmarks.common.entry import entry
from benchmarks.round.run import main

entry("python -m benchmarks.round", main)
