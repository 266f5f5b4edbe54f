#!/usr/bin/env bash
# A glm4v-edge checkpoint's text decoder -> GGUF Q4_0 for `glm4v-edge bench --peer`.
#   LLAMA_CPP_DIR=... bash benchmarks/llama_cpp/to_gguf.sh CHECKPOINT_DIR OUT_PREFIX
# Writes OUT_PREFIX-q8_0.gguf (the converter's output: a peer of its own, and lossless enough as
# quantizer input at half the disk of bf16), OUT_PREFIX-q4_0-pure.gguf (every matrix Q4_0, lm_head
# included) and OUT_PREFIX-q4_k_m.gguf (llama.cpp's usual download: Q4_K with some Q6_K). Runs with this project's own venv (torch, transformers) plus the
# tree's gguf-py; convert.py explains the tokenizer handling.
set -euo pipefail
: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR (printed by build.sh)}"
CHECKPOINT=$1 PREFIX=$2
mkdir -p "$(dirname "$PREFIX")"
HERE=$(cd "$(dirname "$0")" && pwd)
QUANTIZE=${LLAMA_QUANTIZE:-$(dirname "${LLAMA_BENCH:-$LLAMA_CPP_DIR/../../../build/bin/llama-bench}")/llama-quantize}
[ -f "$PREFIX-q8_0.gguf" ] || PYTHONPATH=$LLAMA_CPP_DIR/gguf-py "${PYTHON:-python}" "$HERE/convert.py" \
  "$CHECKPOINT" --outtype q8_0 --outfile "$PREFIX-q8_0.gguf"
[ -f "$PREFIX-q4_0-pure.gguf" ] || "$QUANTIZE" --allow-requantize --pure "$PREFIX-q8_0.gguf" "$PREFIX-q4_0-pure.gguf" Q4_0 2
[ -f "$PREFIX-q4_k_m.gguf" ] || "$QUANTIZE" --allow-requantize "$PREFIX-q8_0.gguf" "$PREFIX-q4_k_m.gguf" Q4_K_M 2
ls -la "$PREFIX"-*.gguf
