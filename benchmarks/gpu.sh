#!/usr/bin/env bash
# The checks that need a GPU, as one script: the CUDA tests, then the server and client
# benchmarks on the GPU. Run from the repository root on a machine with CUDA and the project's
# environment (make .venv/.installed). Every step runs (each at most STEP_TIMEOUT seconds);
# the script fails at the end if any step failed. PY names another interpreter, MODEL another
# model (a built-in name or a local folder). The figures go in the README with the date.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-smollm2-135m}
failed=()
step() {
    echo "== $*"
    timeout "${STEP_TIMEOUT:-1800}" "$@" || failed+=("$* (exit $?)")
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
step $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/bench/test_bench_server.py -k "cuda or CUDA"
step $PY -m benchmarks.server --device cuda --shape llama-3.2-3b --rank 64 --clients 4 \
    --blocks 1 --methods fedsrd,fedsrd-e,florist,flexlora,fedavg --repeats 3 --ref-repeats 1
step $PY -m benchmarks.client --batching --model "$MODEL" --set train.device=cuda \
    --set model.dtype=bfloat16 --set train.local_steps=4 --repeats 3
step $PY -m benchmarks.client --model "$MODEL" --set train.device=cuda \
    --set model.dtype=bfloat16 --repeats 3
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU checks passed"
