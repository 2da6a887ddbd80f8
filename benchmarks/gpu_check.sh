#!/usr/bin/env bash
# What was run on the lent GPU machine to verify the Unsloth backend and data-parallel
# fine-tuning (results in docs/benchmarks.md). Needs .whl/ from benchmarks/gpu_wheels.sh.
#
#   bash benchmarks/gpu_check.sh stages   # prepare..submit stage scripts, Unsloth 4-bit, real shapes
#   bash benchmarks/gpu_check.sh tests    # pytest -m gpu
#   bash benchmarks/gpu_check.sh bench    # benchmarks/backends.py, hf vs unsloth, Qwen3-0.6B shape
#   bash benchmarks/gpu_check.sh ddp      # finetune stage on 1 and 2 GPUs under torchrun
#
# Knobs: FAMILIES, STAGE_SETTINGS, BENCH_ARGS, TAG, DDP_BACKENDS, DDP_GPUS; for a dry run on a CPU:
# BACKEND=hf SHAPE=tiny ROWS=40 GEN_ROWS=8 OUT=/tmp/out
set -uo pipefail
step=${1:?step: stages, tests, bench or ddp}
if [ -d .whl ] && ! python3 -c "import unsloth" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BACKEND=${BACKEND:-unsloth} SHAPE=${SHAPE:-real} ROWS=${ROWS:-400} GEN_ROWS=${GEN_ROWS:-200}
repo=$PWD

# A copy of the work tree with params.yaml pointed at a random-init checkpoint of FAMILY's
# shape and at the scaled data set; more settings as YAML after the family.
tree_for() {  # tree_for DIR FAMILY [KEY=YAML ...]
  local dir=$1 family=$2; shift 2
  rm -rf "$dir"; mkdir -p "$dir"
  cp -r "$repo"/{core,stages,tests,benchmarks,params.yaml,paths.yaml} "$dir"/ && mkdir -p "$dir/data" && cp -r "$repo/data/sample" "$dir/data/"
  (cd "$dir" && python3 -m benchmarks.backends --write-csv data/scaled --rows "$ROWS" --gen-rows "$GEN_ROWS" >/dev/null &&
   python3 - "$family" "$SHAPE" "$BACKEND" "$@" <<'PY'
import sys, yaml
from tests.checkpoints import build_checkpoint
family, shape, backend, *settings = sys.argv[1:]
checkpoint = f"/tmp/checkpoints/{family}-{shape}"
build_checkpoint(family, checkpoint, size="full" if shape == "real" else "tiny")
p = yaml.safe_load(open("params.yaml"))
p["model"] = family
p["data"].update(train_csv="data/scaled/train.csv", test_csv="data/scaled/test.csv", val_fraction=0.1)
profile = p["models"][family]
profile["base"].update(name=checkpoint, backend=backend, load_in_4bit=backend == "unsloth")
profile["training"].update(epochs=1)
profile.setdefault("generation", {}).update(max_new_tokens=256)  # the profile's batch size: auto
for setting in settings:
    key, value = setting.split("=", 1)
    *path, last = key.split(".")
    node = p
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
  )
}

versions() {
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
  python3 -c "import unsloth, bitsandbytes; print('unsloth', unsloth.__version__, 'bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1
}

case $step in
stages)
  versions > "$OUT/device.txt" 2>&1
  for family in ${FAMILIES:-qwen3 llama32}; do
    # shellcheck disable=SC2086  # STAGE_SETTINGS: extra KEY=YAML settings, space-separated
    tree_for "/tmp/tree-$family" "$family" ${STAGE_SETTINGS:-} || exit 1
    log="$OUT/stages-$family.log"
    for stage in prepare finetune predict evaluate submit; do
      start=$SECONDS
      (cd "/tmp/tree-$family" && python3 -m stages.$stage) >> "$log" 2>&1 || echo "$family $stage FAILED" >> "$log"
      echo "$family $stage $((SECONDS - start)) s" >> "$log"
    done
    (cd "/tmp/tree-$family" && python3 -c "import json;print(json.dumps({k: json.load(open(f'metrics/{k}.json')) for k in ('finetune','predict','eval','submit')}, indent=1))") > "$OUT/metrics-$family.json"
    grep -h " s$\|FAILED" "$log"
  done
  ;;
tests)
  # one process (-n 0): the CUDA-graph test must run before the Unsloth tests import unsloth
  python3 -m pytest -m gpu -n 0 -p no:cacheprovider -q tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.log"
  ;;
bench)
  tag=${TAG:-qwen3}
  versions > "$OUT/bench-device.txt" 2>&1
  # shellcheck disable=SC2086  # BENCH_ARGS: more benchmarks/backends.py flags, space-separated
  python3 -m benchmarks.backends --shape qwen3 ${BENCH_ARGS:-} --out "$OUT/bench-$tag.json" 2>"$OUT/bench-$tag.err" | tee "$OUT/bench-$tag.md"
  ;;
ddp)
  # Same workload, same effective batch (8 x grad_accum 2), on 1 and then 2 GPUs.
  versions > "$OUT/ddp-device.txt" 2>&1
  for backend in ${DDP_BACKENDS:-hf unsloth}; do
    BACKEND=$backend tree_for /tmp/tree-ddp qwen3 models.qwen3.base.load_in_4bit=false models.qwen3.training.epochs=2 \
      models.qwen3.training.batch_size=8 models.qwen3.training.grad_accum=2 || exit 1
    (cd /tmp/tree-ddp && python3 -m stages.prepare) > /dev/null 2>&1
    for n in ${DDP_GPUS:-1 2}; do
      log="$OUT/ddp-$backend-$n.log"
      (cd /tmp/tree-ddp && rm -rf models metrics && timeout 400 python3 -m torch.distributed.run --standalone --nproc_per_node "$n" -m stages.finetune) > "$log" 2>&1 \
        && cp /tmp/tree-ddp/metrics/finetune.json "$OUT/ddp-$backend-$n.json"
      echo "$backend on $n: rc $? $(python3 -c "import json;m=json.load(open('$OUT/ddp-$backend-$n.json'));print('tokens/s %.0f val_loss %.4f train_loss %.4f steps %d s %.1f' % (m['train_tokens_per_s'], m['val_loss'], m['train_loss'], m['steps'], m['train_runtime_s']))" 2>/dev/null)"
    done
  done
  ;;
esac
