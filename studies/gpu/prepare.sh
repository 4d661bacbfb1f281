#!/usr/bin/env bash
# Packs, here, what the GPU machine lacks into .gpu/ (ignored by git), for the calls of studies/gpu/README.md:
#   .gpu/wheels/          the locked packages a GPU machine may not have in our versions, for its Python 3.12
#   .gpu/part1 .. part3/  SmolLM2-135M-Instruct's GGUF (98 MB) in three pieces of 33 MB, each copied on its own
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu
mkdir -p .gpu/wheels
# transformers, tokenizers and peft as requirements.lock pins them; gguf reads SmolLM2. torch, accelerate, safetensors, numpy,
# pyarrow, matplotlib, networkx, pyyaml and tqdm are in the image; datasets is only needed for hub ids.
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
    $(grep -E '^(transformers|tokenizers|peft|gguf)==' requirements.lock)
GGUF=$("$PY" -c "from ginformer.pretrained import smollm2_gguf_path; print(smollm2_gguf_path())")
for i in 1 2 3; do mkdir -p ".gpu/part$i"; done
split -n 3 -d -a 1 "$GGUF" .gpu/smollm2.gguf.part
for i in 0 1 2; do mv ".gpu/smollm2.gguf.part$i" ".gpu/part$((i + 1))/smollm2.gguf.part$i"; done
du -sh .gpu/wheels .gpu/part*
