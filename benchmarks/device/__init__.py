"""What a GPU machine lent through the workplace's device tool needs to run
``benchmarks/gpu.sh``: the wheels its image lacks, the built-in data, and SmolLM2's
architecture (its weights are too large to carry, and speed does not depend on them)."""
