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
    KERNEL=(--lengths 1024 4096 16384 32768 --max-dense-length 16384)
else
    STEP=()
    BASELINE=()
    MEMORY=()
    GENERATION=()
    KERNEL=()
fi
FINETUNE=()  # SmolLM2's own shape on every device
LONG=()
SMOLLM2=(--smollm2 --new-tokens 64)  # generation at SmolLM2-135M's shape, 30 layers
if [[ $QUICK == 1 ]]; then
    STEP+=(--lengths 256 1024 --tokens 1024 --repeats 2 --max-dense-length 256)
    BASELINE+=(--lengths 256 512 --repeats 2)
    MEMORY+=(--lengths 256 512 1024)
    GENERATION+=(--new-tokens 32 --repeats 2)
    FINETUNE+=(--layers 4 --lengths 256 1024 --repeats 2)
    LONG+=(--lengths 1024 2048 --repeats 2)
    KERNEL+=(--lengths 1024 2048 --repeats 2)
    SMOLLM2+=(--layers 4 --repeats 2)
fi

run() {  # run TABLE SCRIPT FLAGS...: the table goes to $OUT/TABLE.txt
    local table=$1 script=$2
    shift 2
    echo "== $table"
    if [[ -n ${OUT:-} ]]; then
        mkdir -p "$OUT"
        "$PYTHON" "bench/$script.py" "$@" "${PASSED[@]}" --out "$OUT" | tee "$OUT/$table.txt"
    else
        "$PYTHON" "bench/$script.py" "$@" "${PASSED[@]}"
    fi
}

run attention_step attention_step "${STEP[@]}"
run original_baseline original_baseline "${BASELINE[@]}"
run memory_vs_length memory_vs_length "${MEMORY[@]}"
run generation generation "${GENERATION[@]}"
run generation_smollm2 generation "${SMOLLM2[@]}" --name generation_smollm2
run finetune_step finetune_step "${FINETUNE[@]}"
run long_context long_context "${LONG[@]}"
run sparse_gin_kernel sparse_gin_kernel "${KERNEL[@]}"
