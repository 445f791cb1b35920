"""``python -m benchmarks.quality``: see :mod:`benchmarks.quality.run`."""

from benchmarks.common.entry import entry
from benchmarks.quality.run import main

entry("python -m benchmarks.quality", main)
