"""The ε table: fedlora's accounting beside independent accountants (``python -m
benchmarks.privacy``)."""
