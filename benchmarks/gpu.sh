#!/usr/bin/env bash
# The checks that need a GPU, as one script: the CUDA tests, then the server and client
# benchmarks on the GPU. Run from the repository root on a machine with CUDA and the project's
# environment (make .venv/.installed); it prints everything and stops at the first failure.
# The figures go in the README with the date.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$BIN/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
$BIN/python -m pytest -q tests/test_cuda.py tests/bench/test_bench_server.py -k "cuda or CUDA"
$BIN/python -m benchmarks.server --device cuda --shape llama-3.2-3b --rank 64 --clients 4 \
    --blocks 1 --methods fedsrd,fedsrd-e,florist,fedavg
$BIN/python -m benchmarks.client --model smollm2-135m --set train.device=cuda \
    --set model.dtype=bfloat16 --repeats 3
$BIN/python -m benchmarks.client --batching --model smollm2-135m --set train.device=cuda \
    --set model.dtype=bfloat16 --set train.local_steps=4 --repeats 3
