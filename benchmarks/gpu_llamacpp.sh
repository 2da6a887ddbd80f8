#!/usr/bin/env bash
# llama.cpp with CUDA on the lent GPU machine: does it read our GGUF files as PyTorch does, and how fast
# does the default's shape answer (benchmarks/gguf_llamacpp.py; results in docs/deploy.md).
#
#   bash benchmarks/gpu_llamacpp.sh prepare        # here, after dvc repro: fills .gpu_carry/ (about 51 MB)
#   bash benchmarks/gpu_llamacpp.sh prepare-built  # optional, here, where nvcc 13 and cuBLAS are: builds too
#   bash benchmarks/gpu_llamacpp.sh                # there, with .gpu_carry carried; results under $OUT
#
# The GPU machine has nvcc and cmake but no network and no llama.cpp: llama.cpp (the version llama-cpp-python
# 0.3.36 vendors) is built there with CUDA for sm_90 and its own llama-bench, and the binding's pure-Python
# part is pointed at that build (LLAMA_CPP_LIB_PATH). The source travels without llama.cpp's docs, media and
# benches, to fit the 64 MiB a call carries. prepare-built builds it here instead (2 cores: without
# FlashAttention's kernels, which dominate the build, and without CUDA's virtual memory, whose driver library a
# machine without a GPU lacks) and carries the libraries and llama-bench in place of the source: for a session
# whose device time is short of a build there (about 300 s). Each measurement runs in a process of its own
# (GPU first), so that a crash of one loses nothing of the others; under gdb where installed, for a stack.
set -uo pipefail
CARRY=${CARRY:-.gpu_carry}
VERSION=0.3.36
# The CPU's instructions named, not -march=native: the lent machines' Xeons report AMX, and llama.cpp's AMX
# path crashed there (2026-12-07: every quantized file, the official SmolLM2 Q4_1 included; a native CUDA
# build also crashed while loading the tokenizer, a CPU build without AMX ran).
CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON"
CPU_FLAGS="$CPU_FLAGS -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
src=/tmp/llama_cpp_python-$VERSION build=/tmp/llama.cpp-cuda
build_cuda() {  # llama.cpp and llama-bench with CUDA for sm_90 in $build, from the carried source
  [ -d "$src" ] || tar xzf "$CARRY/llama_cpp_python-slim.tar.gz" -C /tmp || return 1
  cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 $CPU_FLAGS "$@" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF &&
    cmake --build "$build" -j "$(nproc)" --target llama llama-bench
}
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
if [ "${1:-run}" = prepare-built ]; then
  build_cuda -DGGML_CUDA_FA=OFF -DGGML_CUDA_NO_VMM=ON -DGGML_CUDA_NCCL=OFF || exit 1
  tmp=$(mktemp -d) && cp -a "$build"/bin/* "$tmp/" && strip --strip-unneeded "$tmp"/*.so.* "$tmp/llama-bench" &&
    tar cJf "$CARRY/built.tar.xz" -C "$tmp" . && cp -r "$src/llama_cpp" "$CARRY/" &&
    rm -rf "$tmp" "$CARRY/llama_cpp_python-slim.tar.gz" || exit 1  # about 29 MB in place of 51
  du -sh "$CARRY"; exit 0
fi

repo=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$CARRY"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$repo PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONFAULTHANDLER=1
# The default's shape as q8_0 and f16 (random weights: speed needs none trained), written as the gguf stage
# does, while llama.cpp builds.
files=/tmp/gguf-bench
timeout 200 python3 -c "
import yaml; from pathlib import Path; from benchmarks.gguf_llamacpp import speed_files
print(speed_files(Path('$CARRY/tok'), Path('$files'), yaml.safe_load(Path('params.yaml').read_text())['prompt']['system']))
" >"$OUT/files.log" 2>&1 &
writing=$!
# llama.cpp with its own tools (llama-bench: the figure published for other boards), carried built or built
# here; the Python binding is its pure-Python part, pointed at that build's libraries.
export LLAMA_CPP_LIB_PATH=$build/bin
if [ -f "$CARRY/built.tar.xz" ]; then
  mkdir -p "$build/bin" && tar xJf "$CARRY/built.tar.xz" -C "$build/bin" && cp -r "$CARRY/llama_cpp" /tmp/site/ || exit 1
  # CUDA's runtime and cuBLAS where that machine keeps them (a build there records their place itself)
  cuda_libs=$(find /usr /opt -name libcublas.so.13 -printf "%h:" 2>/dev/null)
  export LD_LIBRARY_PATH=$build/bin:${cuda_libs}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
elif [ ! -x "$build/bin/llama-bench" ]; then
  began=$(date +%s)
  build_cuda ${CMAKE_EXTRA:-} >"$OUT/build.log" 2>&1 && cp -r "$src/llama_cpp" /tmp/site/
  echo "cuda build rc=$? in $(($(date +%s) - began)) s" | tee -a "$OUT/build.log"
fi
lscpu | grep "Model name"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import llama_cpp; print(llama_cpp.__version__, llama_cpp.llama_print_system_info().decode())"
wait $writing; echo "files rc=$?"

# llama.cpp's own benchmark: a 184-token prompt (the real test rows' median) and 32 / 128 generated tokens;
# then the Python binding on the same files (our prompts through our template); the GPU's figures first.
for precision in q8_0 f16; do
  timeout 90 "$build/bin/llama-bench" -m "$files/smollm2-shape-$precision.gguf" -ngl 99 -p 184 -n 32,128 -r 5 \
    -o json >"$OUT/llama-bench-gpu-$precision.json" 2>"$OUT/llama-bench-gpu-$precision.log"
  echo "llama-bench gpu $precision rc=$?"
done
debug=""; command -v gdb >/dev/null && debug="gdb -q -batch -ex run -ex bt --args"
bench="python3 -m benchmarks.gguf_llamacpp --tokenizer $CARRY/tok --threads 2 --rows 20 ${BENCH_ARGS:-}"
timeout 120 taskset -c 0,1 $debug $bench --gpu --skip agreement --out "$OUT/gguf-gpu.json" >"$OUT/bench-gpu.log" 2>&1
echo "python gpu rc=$?"
for precision in q8_0 f16; do
  timeout 60 taskset -c 0,1 "$build/bin/llama-bench" -m "$files/smollm2-shape-$precision.gguf" -ngl 0 -t 2 -p 184 \
    -n 32 -r 3 -o json >"$OUT/llama-bench-cpu-$precision.json" 2>"$OUT/llama-bench-cpu-$precision.log"
  echo "llama-bench cpu $precision rc=$?"
done
timeout 100 taskset -c 0,1 $debug $bench --out "$OUT/gguf-cpu.json" >"$OUT/bench-cpu.log" 2>&1
echo "python cpu rc=$?"
grep -hv "Warn\|it/s\|Loading\|Writing" "$OUT/bench-gpu.log" "$OUT/bench-cpu.log" | tail -30
