#!/usr/bin/env bash
# The checks that need a GPU, as one script: the CUDA tests, then the server and client
# benchmarks on the GPU. Run from the repository root on a machine with CUDA and the project's
# environment (make .venv/.installed); on a lent machine, benchmarks/device/run.sh prepares
# one and calls this. Usage: bash benchmarks/gpu.sh [tests] [server] [client] [quantize]
# (default: tests server client). Every step runs (each at most STEP_TIMEOUT seconds); the
# script fails at the end if any step failed. PY names another interpreter, MODEL another model
# (a built-in name or a local folder). With JSON_DIR set, the benchmarks' reports go there as
# server-/batching-/client-<gpu>-<date>.json: commit them under benchmarks/*/results/ and
# rebuild docs/performance.md with python -m benchmarks.performance_doc.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-smollm2-135m}
STAGES=("$@")
((${#STAGES[@]})) || STAGES=(tests server client)
failed=()
step() {
    echo "== $*"
    timeout "${STEP_TIMEOUT:-1800}" "$@" || failed+=("$* (exit $?)")
}
wanted() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE '\b[a-z][0-9]{2,4}\b' | head -1 | tr '[:upper:]' '[:lower:]')
report() { # report NAME: --json-out PATH when JSON_DIR is set
    [[ -n "${JSON_DIR:-}" ]] && echo --json-out "$JSON_DIR/$1-${gpu:-cuda}-$(date -u +%F).json"
}
step $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
if wanted tests; then
    step $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/bench/test_bench_server.py -k "cuda or CUDA"
fi
if wanted server; then
    step $PY -m benchmarks.server --device cuda --shape llama-3.2-3b --rank 64 --clients 4 \
        --blocks 1 --methods fedsrd,fedsrd-e,florist,flexlora,fedavg --repeats 3 --ref-repeats 1 \
        $(report server)
fi
if wanted client; then
    step $PY -m benchmarks.client --batching --model "$MODEL" --set train.device=cuda \
        --set model.dtype=bfloat16 --set train.local_steps=4 --repeats 3 $(report batching)
    step $PY -m benchmarks.client --model "$MODEL" --set train.device=cuda \
        --set model.dtype=bfloat16 --repeats 3 $(report client)
fi
if wanted quantize; then
    step $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "quantiz"
fi
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU checks passed: ${STAGES[*]}"
