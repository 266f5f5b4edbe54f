#!/usr/bin/env bash
# The wheels benchmarks/gpu/run.sh installs on a GPU machine with no internet. That machine has
# Python 3.12 with torch, transformers, accelerate, onnx, onnxruntime, numpy, pillow, rich, typer,
# matplotlib, safetensors, tokenizers, psutil and pyarrow; this adds only what it lacks (about
# 14 MB, well under the 64 MiB that can travel with the repository):
#   glm4v-edge               this project (built from the checkout)
#   gptqmodel, optimum       the int4 variant: quantize (RTN) and load. gptqmodel is built with
#                            BUILD_CUDA_EXT=0: no compiler is needed there; its Triton / torch
#                            kernels are the ones that can load, and the report names the one that did
#   torchao, dill, defuser, device-smi, logbar, tokenicer, pypcre
#                            what gptqmodel imports at run time (its build-only and data-set needs
#                            are left out). pypcre is a C extension (it links the system's libpcre2-8,
#                            part of every Debian/Ubuntu base): built here for Python 3.12, so
#                            PYTHON312 must name a Python 3.12 (default: python3.12)
# av (video) and gradio (the demo) are not needed by the benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
HOUSE=benchmarks/gpu/wheelhouse
PYTHON312=${PYTHON312:-python3.12}
rm -rf "$HOUSE" && mkdir -p "$HOUSE"
python3 -m pip wheel -q --no-deps -w "$HOUSE" .
BUILD_CUDA_EXT=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$HOUSE" "gptqmodel==7.6.0"
# Published as source only, pure Python: built into wheels here.
python3 -m pip wheel -q --no-deps -w "$HOUSE" "defuser==0.0.28" "device-smi==0.5.7" "logbar==0.4.15" "tokenicer==0.0.14"
"$PYTHON312" -m pip wheel -q --no-deps -w "$HOUSE" "pypcre==0.6.4"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$HOUSE" "optimum==2.3.0" "torchao==0.18.0" "dill==0.4.1"
ls "$HOUSE"
du -sh "$HOUSE"
