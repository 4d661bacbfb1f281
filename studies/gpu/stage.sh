#!/usr/bin/env bash
# On the GPU machine: keep the pieces of SmolLM2's GGUF copied into .gpu/partN (see prepare.sh) in $STAGE, where
# run.sh finds them, so that .gpu/ can take the next piece.
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-/tmp/ginformer_stage}
mkdir -p "$STAGE"
cp .gpu/part*/smollm2.gguf.part* "$STAGE"/
ls -la "$STAGE"
