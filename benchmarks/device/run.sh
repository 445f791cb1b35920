#!/usr/bin/env bash
# benchmarks/gpu.sh on a GPU machine lent through the device tool, which reaches no registry:
# installs the kit of `python -m benchmarks.device.kit` (.gpu/, carried) beside the image's
# own torch, unpacks the built-in data, gives SmolLM2-135M's architecture random weights, then
# runs the stages named (tests server client quantize) with the reports written to $OUT.
# One call per stage group keeps each inside the tool's 10 minutes (README.md beside this).
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=$PWD/.gpu
PY=${PY:-python3}
if [[ " $* " == *" quantize "* ]]; then
    wheels=("$KIT"/quantize/*.whl)
else
    wheels=("$KIT"/wheels/*.whl)
fi
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$KIT/site" "${wheels[@]}" || exit 1
export PYTHONPATH=$KIT/site:$PWD/src:$PWD
export FEDLORA_CACHE=$KIT/cache PYTHONUNBUFFERED=1
if [[ ! -d $FEDLORA_CACHE/data ]]; then
    mkdir -p "$FEDLORA_CACHE" && tar -xzf "$KIT/data.tar.gz" -C "$FEDLORA_CACHE" || exit 1
fi
$PY -c "import fedlora.cli, benchmarks.server.run, benchmarks.client.run, datasets, peft, trl" || exit 1
$PY -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|datasets|pyarrow|fsspec|numpy|accelerate) '
MODEL=$KIT/smollm2-135m-random
[[ -f $MODEL/config.json ]] || $PY -m benchmarks.device.random_model "$KIT/smollm2-135m-config" "$MODEL" || exit 1
PY=$PY MODEL=$MODEL JSON_DIR=${OUT:-$KIT/out} STEP_TIMEOUT=${STEP_TIMEOUT:-420} bash benchmarks/gpu.sh "$@"
