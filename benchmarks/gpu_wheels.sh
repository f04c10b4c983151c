#!/usr/bin/env bash
# Downloads into .whl/ the wheels that benchmarks/gpu_check.sh installs on the lent GPU machine, which has no network:
# the packages e2e-tts needs that its image lacks, at the versions installed in .venv here (the ones the tests ran).
#
#   bash benchmarks/gpu_wheels.sh          # here, once; then carry .whl (BENCHMARKS.md: the device run call)
#   PYTHON_VERSION=3.11 WHEELS=/tmp/whl311 bash benchmarks/gpu_wheels.sh   # the same set for another Python (to
#                                          # rehearse the install here, in a venv holding only the machine's packages)
#
# That machine runs Python 3.12 on x86-64 with torch 2.11 (CUDA 13), transformers, torchdiffeq, numpy, scipy,
# safetensors, tensorboard, tqdm, pyyaml, einops, sympy, psutil, py-cpuinfo, msgpack, ninja, click and
# typing-extensions already (/work/.library/device/KINDS.md, "Python packages already there"). What it lacks:
# deepspeed (and pydantic with its parts, hjson), vector-quantize-pytorch (einx, frozendict, torch-einops-utils,
# loguru), omegaconf, webdataset (braceexpand), jiwer (rapidfuzz), soundfile (cffi, pycparser), soxr and
# espeakng-loader. typing-extensions travels too: pydantic needs a recent one. The eval extras (pocketsphinx,
# resemblyzer, silero-vad) do not: the check scores nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
out=${WHEELS:-.whl}
packages=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
          vector-quantize-pytorch einx frozendict torch-einops-utils loguru omegaconf webdataset braceexpand
          jiwer rapidfuzz soundfile cffi pycparser soxr espeakng-loader)
# name==version of each, as installed here
pinned=$("$python" - "${packages[@]}" <<'EOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
EOF
)
deepspeed=$("$python" -c 'from importlib.metadata import version; print(version("deepspeed"))')

rm -rf "$out"
mkdir -p "$out"
# pip matches manylinux tags exactly: name each one the wheels of these packages use.
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
# shellcheck disable=SC2086  # $pinned is a list of words
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
  --implementation cp "${platforms[@]}" -d "$out" $pinned

# DeepSpeed publishes only a source archive. Built without its ops (DS_BUILD_OPS=0, the default) it is a pure-Python
# wheel whose ops compile on first use; the engine's client AdamW needs none of them.
source_dir=$(mktemp -d)
trap 'rm -rf "$source_dir"' EXIT
"$python" -m pip download -q --no-deps --no-binary=:all: -d "$source_dir" "deepspeed==$deepspeed"
DS_BUILD_OPS=0 "$python" -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$source_dir"/deepspeed-*.tar.gz

count=$(find "$out" -type f -name '*.whl' | wc -l)
expected=$((${#packages[@]} + 1))
if [[ $count -ne $expected ]]; then
  echo "error: $count wheels in $out, expected $expected" >&2
  exit 1
fi
echo "$count wheels in $out: $(du -sh "$out" | cut -f1)"
