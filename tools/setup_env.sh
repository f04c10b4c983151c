#!/usr/bin/env bash
# Creates .venv and installs e2e-tts into it, plus the Debian packages the demo and tests use.
#   bash tools/setup_env.sh          # runtime + offline judges (pocketsphinx, resemblyzer, silero-vad)
#   bash tools/setup_env.sh --test   # also the test tools
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build (constraints-cpu.txt); without the pin,
# pip pulls the newest CUDA torch and several GB of CUDA packages. With a GPU, install your CUDA torch into .venv
# first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="eval"
[[ "${1:-}" == "--test" ]] && extras="test"

# Debian packages: flite voices for the corpus, LibriVox prompts for evaluation. Best effort where apt is missing.
packages=(flite pocketsphinx-testdata)
python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)
command -v gcc >/dev/null 2>&1 || packages+=(build-essential python3-dev)  # webrtcvad (resemblyzer) builds from source
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
apt_install() { DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null; }
if command -v apt-get >/dev/null 2>&1; then
  if ((${#missing[@]})) || { [[ $extras == test ]] && ! dpkg -s chromium >/dev/null 2>&1; }; then
    $sudo_cmd apt-get update -qq
  fi
  ((${#missing[@]})) && apt_install "${missing[@]}"
  # The report test renders the page in headless Chromium and skips (saying why) without it.
  if [[ $extras == test ]] && ! dpkg -s chromium >/dev/null 2>&1; then
    apt_install chromium || echo "warning: no chromium package here; the report screenshot test will be skipped" >&2
  fi
elif ((${#missing[@]})); then
  echo "warning: install ${missing[*]} with your package manager (the corpus needs flite)" >&2
fi

python3 -m venv .venv
if .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
   || command -v nvidia-smi >/dev/null 2>&1; then
  constraint=()
else
  constraint=(-c constraints-cpu.txt)
  export PIP_CONSTRAINT="$PWD/constraints-cpu.txt"  # also reaches pip's isolated build environments
fi
if ((${#constraint[@]})) && ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # The CPU build: from the configured index if it has it, else from PyTorch's CPU wheel index.
  .venv/bin/pip install -q "${constraint[@]}" torch 2>/dev/null \
    || .venv/bin/pip install -q "${constraint[@]}" torch --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/pip install -q "${constraint[@]}" -e ".[${extras}]"
echo "e2e-tts installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
