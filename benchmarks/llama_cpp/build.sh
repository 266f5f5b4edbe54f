#!/usr/bin/env bash
# llama.cpp (CPU, Release) for the benchmark's peer row: the tree vendored in the
# llama-cpp-python sdist on PyPI (exact upstream commit in its CHANGELOG; 0.3.36 = 0c1e570),
# built with cmake + ninja. ~6 min on 2 idle cores; cached (ninja rebuilds only what changed).
#   OUT=~/.cache/glm4v-edge/llama.cpp bash benchmarks/llama_cpp/build.sh
# Then: export LLAMA_BENCH=$OUT/build/bin/llama-bench
set -euo pipefail
OUT=${OUT:-$HOME/.cache/glm4v-edge/llama.cpp}
VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
SRC=$OUT/llama_cpp_python-$VER/vendor/llama.cpp
mkdir -p "$OUT"
[ -f "$OUT/llama_cpp_python-$VER.tar.gz" ] ||
  "${PYTHON:-python3}" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$OUT"
[ -f "$SRC/CMakeLists.txt" ] || tar -xzf "$OUT/llama_cpp_python-$VER.tar.gz" -C "$OUT"
command -v cmake >/dev/null && command -v ninja >/dev/null || { apt-get update && apt-get install -y cmake ninja-build; }
# ggml's AMX matmul (compiled in by -march=native where the CPU lists AMX) died with SIGILL at its
# first tile instruction on the 2-core Intel Xeon of 2026-12-06, which lists amx_int8: built without
# it, llama.cpp runs its AVX-512 VNNI kernels there. GGML_AMX=1 keeps it.
NO_AMX=$([ "${GGML_AMX:-0}" = 1 ] || echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
[ -f "$OUT/build/build.ninja" ] || cmake -S "$SRC" -B "$OUT/build" -G Ninja \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$OUT/build" --target llama-bench llama-quantize -j"${JOBS:-2}"
echo "export LLAMA_BENCH=$OUT/build/bin/llama-bench LLAMA_CPP_DIR=$SRC"
