#!/usr/bin/env bash
# llama.cpp with CUDA on the lent GPU machine: does it read our GGUF files as PyTorch does, and how fast
# does the default's shape answer (benchmarks/gguf_llamacpp.py; results in docs/deploy.md).
#
#   bash benchmarks/gpu_llamacpp.sh prepare   # here, after dvc repro: fills .gpu_carry/ (about 51 MB)
#   bash benchmarks/gpu_llamacpp.sh           # there, with .gpu_carry carried; results under $OUT
#
# The GPU machine has nvcc, cmake and scikit-build-core but no network and no llama.cpp: the binding is
# built there from its source (CUDA for sm_90, about 280 s on 16 cores). The source travels without
# llama.cpp's docs, media and benches, to fit the 64 MiB a call carries. The GPU's speed runs in a process
# of its own before the CPU's, so that a crash of one loses nothing of the other.
set -uo pipefail
CARRY=${CARRY:-.gpu_carry}
VERSION=0.3.36
if [ "${1:-run}" = prepare ]; then
  mkdir -p "$CARRY/tok" && tmp=$(mktemp -d) || exit 1
  pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$VERSION" || exit 1
  pip download -q --no-deps -d "$CARRY" gguf==0.19.0 diskcache==5.6.3 || exit 1
  tar xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp" &&
    rm -rf "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp/"{docs,media,benches} &&
    tar czf "$CARRY/llama_cpp_python-slim.tar.gz" -C "$tmp" "llama_cpp_python-$VERSION" || exit 1
  cp models/merged/{tokenizer.json,tokenizer_config.json,chat_template.jinja} "$CARRY/tok/" || exit 1
  rm -rf "$tmp"; du -sh "$CARRY"; exit 0
fi

# The CPU's instructions named, not -march=native: the lent machines' Xeons report AMX, and llama.cpp's AMX
# path crashed there (2026-12-07: every quantized file, the official SmolLM2 Q4_1 included; a native CUDA
# build also crashed while loading the tokenizer, a CPU build without AMX ran).
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON"
CPU_FLAGS="$CPU_FLAGS -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
repo=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$repo PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONFAULTHANDLER=1
if ! python3 -c "import llama_cpp" 2>/dev/null; then
  (cd /tmp && tar xzf "$repo/$CARRY/llama_cpp_python-slim.tar.gz" && cd "llama_cpp_python-$VERSION" &&
    began=$(date +%s) &&
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 $CPU_FLAGS -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout 400 python3 -m pip install -q --no-build-isolation --no-deps \
      --target /tmp/site . >"$OUT/build.log" 2>&1
    echo "cuda build rc=$? in $(($(date +%s) - began)) s" | tee -a "$OUT/build.log")
fi
lscpu | grep "Model name"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
bench="python3 -m benchmarks.gguf_llamacpp --tokenizer $CARRY/tok --threads 2 --rows 20 ${BENCH_ARGS:-}"
taskset -c 0,1 $bench --gpu --skip agreement --out "$OUT/gguf-gpu.json" >"$OUT/bench-gpu.log" 2>&1
echo "gpu rc=$?"
taskset -c 0,1 $bench --out "$OUT/gguf-cpu.json" >"$OUT/bench-cpu.log" 2>&1
echo "cpu rc=$?"
grep -hv "Warn\|it/s\|Loading\|Writing" "$OUT/bench-gpu.log" "$OUT/bench-cpu.log" | tail -12
