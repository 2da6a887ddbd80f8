#!/usr/bin/env bash
# What was run on the lent H100 to verify the Unsloth backend (see docs/benchmarks.md).
# Expects the wheels of ../shared/gpu/wheelhouse.sh (with trl 1.14.2) plus dvclive's and
# rouge-score's in .whl/, and writes under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt"
python3 -c "import torch, transformers, peft, trl, unsloth, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'unsloth', unsloth.__version__, 'bitsandbytes', bitsandbytes.__version__)" >> "$OUT/device.txt" 2>&1

step=${1:-all}
cp params.yaml /tmp/params.orig
if [ "$step" = stages ] || [ "$step" = all ]; then
  # The stage scripts, as `dvc repro` would run them, with backend: unsloth and 4-bit loading,
  # on random-init checkpoints of the real Qwen3-0.6B and Llama-3.2-1B shapes and 400 training rows.
  python3 -m benchmarks.backends --write-csv data/scaled --rows 400 --gen-rows 200
  for family in qwen3 llama32; do
    python3 - "$family" <<'PY'
import sys, yaml
from tests.checkpoints import REAL_SHAPES, build_checkpoint
family = sys.argv[1]
build_checkpoint(family, f"/tmp/{family}", shape=REAL_SHAPES[family])
p = yaml.safe_load(open("params.yaml"))
p["model"] = family
p["data"].update(train_csv="data/scaled/train.csv", test_csv="data/scaled/test.csv", val_fraction=0.1)
p["models"][family].update(name=f"/tmp/{family}", backend="unsloth", load_in_4bit=True)
p["models"][family]["training"].update(epochs=1)
p["models"][family]["generation"] = {"max_new_tokens": 256, "batch_size": 64}
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
    for stage in prepare finetune predict evaluate submit; do
      start=$SECONDS
      python3 -m stages.$stage >> "$OUT/stages-$family.log" 2>&1 || echo "$family $stage FAILED" >> "$OUT/stages-$family.log"
      echo "$family $stage $((SECONDS - start)) s" >> "$OUT/stages-$family.log"
    done
    grep -h " s$\|FAILED\|Error" "$OUT/stages-$family.log" | tail -8
    python3 -c "import json;print(json.dumps({k: json.load(open(f'metrics/{k}.json')) for k in ('finetune','predict','submit')}))" > "$OUT/metrics-$family.json"
    cp /tmp/params.orig params.yaml
  done
fi
if [ "$step" = tests ] || [ "$step" = all ]; then
  python3 -m pytest -m gpu -p no:cacheprovider -q tests/test_gpu.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.log"
fi
if [ "$step" = bench ] || [ "$step" = all ]; then
  python3 -m benchmarks.backends --shape qwen3 --out "$OUT/bench-qwen3.json" 2>"$OUT/bench-qwen3.err" | tee "$OUT/bench-qwen3.md"
fi
