#!/usr/bin/env bash
# The card's GPU comparison in one command: torch fp16 (the baseline), bf16, a static KV cache
# (eager and compiled), GPTQModel int4 and ONNX fp16 / q4f16 on CUDA, each in its own process,
# on the 9B shape with random weights. JSON, Markdown and PNGs land in $OUT.
#
#   bash benchmarks/gpu/run.sh                                   # a GPU machine (no internet needed)
#   DEVICE=cpu PRESET=embedded RUNS=1 bash benchmarks/gpu/run.sh  # the same steps on CPU (tests/test_gpu_script.py)
#
# On a machine with torch, transformers, onnx and onnxruntime installed and no internet, the
# project comes from benchmarks/gpu/wheelhouse/ (make it on a connected machine with
# benchmarks/gpu/make_wheelhouse.sh and carry it along).
set -euo pipefail
cd "$(dirname "$0")/../.."

DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-9b}          # 9b: the real shape, random weights; embedded: the shipped tiny model
RUNS=${RUNS:-3}
OUT=${OUT:-benchmarks/results}
WORK=${WORK:-/tmp/glm4v-edge-gpu}
mkdir -p "$WORK"

# 1. What the machine lacks (the project runs from this checkout), without touching its own
#    torch / transformers / onnx / onnxruntime.
if ! python3 -c "import gptqmodel, optimum" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" benchmarks/gpu/wheelhouse/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
run() { python3 -m glm4v_edge "$@"; }

# 2. The checkpoint, made here (20.6 GB in bf16 for the 9B: nothing to download).
MODEL=()
if [ "$PRESET" != embedded ]; then
    [ -f "$WORK/random-$PRESET/config.json" ] || run tiny random --preset "$PRESET" --out "$WORK/random-$PRESET"
    MODEL=(--model "$WORK/random-$PRESET")
fi
BUILD="$WORK/build-$PRESET"
rm -rf "$BUILD"

# 3. ONNX fp16 / q4f16, only where they can run: on CPU, or on CUDA with onnxruntime-gpu (the
#    bounded-memory export; its parity is left to the benchmark's fidelity columns). Where they
#    cannot run, the benchmark writes a "not run" row for each; where the export fails (it refuses
#    an older torch), the other rows still run.
ONNX=onnx-fp16,onnx-q4f16
if [ "$DEVICE" = cpu ] || python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    if ! run export onnx "${MODEL[@]}" --out "$BUILD" --dtypes fp16,q4f16 --no-parity; then
        echo "run.sh: onnx-fp16, onnx-q4f16 not run: glm4v-edge export onnx failed (its error is above)" >&2
        ONNX=
    fi
fi

# 4. Int4 by GPTQModel, into the same folder: round-to-nearest in GPTQ format (calibrating 40
#    layers does not fit the 10-minute budget); GPTQModel picks the fastest kernel it can load
#    there, and the report names it (details.linear_kernel). If it fails there, the torch rows
#    still run (the GPU minutes are few) and the failure is printed above the table.
VARIANTS=torch-bf16,torch-fp16-static,torch-fp16-compiled
if run quantize gptq "${MODEL[@]}" --out "$BUILD/rtn-int4" --method rtn --device "$DEVICE"; then
    VARIANTS+=,rtn-int4
else
    echo "run.sh: rtn-int4 not run: glm4v-edge quantize gptq failed (its error is above)" >&2
fi

# 5. Every variant against torch fp16, each in its own process (an ONNX variant that cannot run
#    here is a "not run" row saying why).
run bench --artifacts "$BUILD" "${MODEL[@]}" --device "$DEVICE" --baseline torch-fp16 \
    --variants "$VARIANTS${ONNX:+,$ONNX}" \
    --prompts gpu --runs "$RUNS" --task-questions 0 --out "$OUT" --name "gpu-$PRESET"
