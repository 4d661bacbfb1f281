#!/usr/bin/env bash
# On the GPU machine: keep a carried piece of SmolLM2's GGUF (.gpu/partN, see prepare.sh) in $STAGE, where the
# next call's run.sh finds it; the machine keeps it while it stays warm (30 s after a call).
set -euo pipefail
cd "$(dirname "$0")/../.."
STAGE=${STAGE:-/tmp/ginformer_stage}
mkdir -p "$STAGE"
cp .gpu/part*/smollm2.gguf.part* "$STAGE"/
ls -la "$STAGE"
