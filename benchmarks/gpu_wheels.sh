#!/usr/bin/env bash
# Build .whl/ for the lent GPU machine: the shared Unsloth wheelhouse, with trl pinned as in
# requirements.txt, plus what the stage scripts need there that the GPU image lacks
# (dvclive and its dvc closure, rouge-score, pytest; ONNX Runtime GenAI and the onnxruntime and
# onnx-ir it needs, for the export and deploy stages). The GPU image already has torch,
# transformers, peft, accelerate, numpy, pandas and pyyaml; those are left out.
set -euo pipefail
out=.whl
bash ../shared/gpu/wheelhouse.sh "$out"
rm -f "$out"/trl-*.whl
tmp=$(mktemp -d)
plat=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  plat+=(--platform "$p")
done
# Dependency closure of dvclive (which imports dvc) + rouge-score, from this machine's venv,
# minus what the GPU image has or what is already in the wheelhouse.
python3 - > "$tmp/reqs.txt" <<'PY'
import importlib.metadata as md, re
skip = {"torch", "transformers", "peft", "accelerate", "numpy", "pandas", "pyyaml", "triton",
        "setuptools", "networkx", "regex", "tokenizers", "huggingface-hub", "safetensors",
        "sympy", "jinja2", "markupsafe", "filelock", "fsspec", "packaging", "requests",
        "urllib3", "idna", "certifi", "charset-normalizer", "tqdm", "typing-extensions",
        "mpmath", "python-dateutil", "six", "pytz", "tzdata", "psutil", "pyarrow", "onnx", "protobuf",
        "ml-dtypes", "flatbuffers"}
seen, todo = {}, ["dvclive", "rouge-score", "pytest", "pytest-xdist", "trl", "onnxruntime-genai", "onnx-ir"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen or name in skip:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    seen[name] = dist.version
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
for name, version in sorted(seen.items()):
    print(f"{name}=={version}")
PY
have=$(ls "$out" | sed -E 's/-[0-9].*//' | tr 'A-Z_' 'a-z-' | sort -u)
grep -v -i -x -F -f <(echo "$have" | sed 's/$/==.*/') "$tmp/reqs.txt" | while read -r req; do
  n=$(echo "${req%%==*}" | tr 'A-Z_' 'a-z-')
  echo "$have" | grep -qx "$n" && continue
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d "$tmp/w" "$req" 2>/dev/null || python3 -m pip wheel -q --no-deps -w "$tmp/w" "$req"
done
mv "$tmp"/w/*.whl "$out"/
rm -rf "$tmp"
du -sh "$out"
