#!/usr/bin/env bash
# Run every benchmark and keep its table.
#
#   bash bench/run_all.sh [--quick] [flags passed to every script, e.g. --dtype bfloat16]
#
# --quick: short lengths and few repeats, a smoke run of a few minutes on a 2-core CPU.
# On a CUDA machine larger shapes are chosen (a tiny model would measure kernel-launch overhead, not attention).
# Each table is printed and, when $OUT is set, also written to $OUT/<script>.txt, with a JSON copy beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python

QUICK=0
PASSED=()
for arg in "$@"; do
    if [[ $arg == --quick ]]; then QUICK=1; else PASSED+=("$arg"); fi
done

if [[ $("$PYTHON" -c 'import torch; print(torch.cuda.is_available())') == True ]]; then
    MODEL=(--hidden 1024 --heads 16)
    STEP=("${MODEL[@]}" --layers 4 --tokens 8192)
    BASELINE=(--batch 8 --hidden 1024 --heads 16 --lengths 256 512 1024 2048)
    MEMORY=("${MODEL[@]}" --layers 4 --lengths 512 1024 2048 4096 8192)
    GENERATION=("${MODEL[@]}" --layers 8 --batch 8)
else
    STEP=()
    BASELINE=()
    MEMORY=()
    GENERATION=()
fi
FINETUNE=()  # SmolLM2's own shape on every device
if [[ $QUICK == 1 ]]; then
    STEP+=(--lengths 256 1024 --tokens 1024 --repeats 2 --max-dense-length 256)
    BASELINE+=(--lengths 256 512 --repeats 2)
    MEMORY+=(--lengths 256 512 1024)
    GENERATION+=(--new-tokens 32 --repeats 2)
    FINETUNE+=(--layers 4 --lengths 256 1024 --repeats 2)
fi

run() {
    local name=$1
    shift
    echo "== $name"
    if [[ -n ${OUT:-} ]]; then
        mkdir -p "$OUT"
        "$PYTHON" "bench/$name.py" "$@" "${PASSED[@]}" --out "$OUT" | tee "$OUT/$name.txt"
    else
        "$PYTHON" "bench/$name.py" "$@" "${PASSED[@]}"
    fi
}

run attention_step "${STEP[@]}"
run original_baseline "${BASELINE[@]}"
run memory_vs_length "${MEMORY[@]}"
run generation "${GENERATION[@]}"
run finetune_step "${FINETUNE[@]}"
