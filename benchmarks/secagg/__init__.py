"""What secure aggregation adds to a round: ``python -m benchmarks.secagg``."""
