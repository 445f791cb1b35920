"""What measures fedlora rather than serves its users: the server, client, round-cost and
quality benchmarks (one package each, run as ``python -m benchmarks.<name>`` or ``make
bench-<name>``) and what they share (``common``). It imports ``fedlora``; ``fedlora`` never
imports it. See benchmarks/README.md."""
