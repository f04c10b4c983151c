#!/usr/bin/env bash
# The prepared GPU check of issue 22: what a session lent one GPU (an H200) measures in at most 8 minutes.
#
#   bash benchmarks/gpu_check.sh --prepare   # here, once: the wheels (.whl/) and a demo shard set (data/gpu_check/)
#   bash benchmarks/gpu_check.sh             # on the GPU machine, through the device tool (BENCHMARKS.md gives the
#                                            # run call: its command and carry list)
#   bash benchmarks/gpu_check.sh --dry-run   # here, on the CPU at tiny sizes: every part of the script, in minutes
#
# Parts, each under its own time limit inside a total budget; one that fails or runs out is reported and the
# others go on:
#   install  the carried wheels into $SITE (the machine has no network and lacks deepspeed and a few others)
#   peak     the bf16 matmul peak that MFU is measured against (benchmarks/mfu.py peak)
#   llm      the paper-size LLM (0.44 B without its text embedding), bf16 updates under ZeRO-2 at two batch sizes:
#            tokens/s, MFU (benchmarks/mfu.py paper)
#   flow     the paper-size flow (0.52 B) likewise: mel frames/s, MFU
#   rtf      synthesis real-time factor at paper size, random weights (benchmarks/rtf.py --preset paper)
#   stages   the tiny recipe's joint, separate and e2e stages with 8x larger batches: MFU per stage
#            (benchmarks/mfu.py stages, on the carried shards)
#   recipe   the same stages through `e2e-tts train` itself: updates per minute (benchmarks/stage_throughput.py)
# Results: $OUT/summary.md (also printed), $OUT/summary.json (every number) and $OUT/logs.tar.gz (each part's log
# and JSON). OUT is the device tool's; here it defaults to exp/gpu_check (exp/gpu_check_dry for --dry-run).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=run
case "${1:-}" in
  --prepare) mode=prepare ;;
  --dry-run) mode=dry ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac
DATA=${DATA:-data/gpu_check/shards}  # the shard list train.list lives here
WHEELS=${WHEELS:-.whl}

if [[ $mode == prepare ]]; then
  set -e
  bash benchmarks/gpu_wheels.sh
  corpus=$(dirname "$DATA")/corpus
  # 500 sentences of the demo domain in flite's rms voice (~25 min of audio): about 30 MB of FLAC shards, which
  # with the wheels and the repository stays under the 64 MiB a device call carries.
  [[ -f $corpus/train.jsonl ]] || .venv/bin/e2e-tts corpus --out "$corpus" --num-sentences 500 --voices rms --seed 0
  [[ -f $DATA/train.list ]] || .venv/bin/e2e-tts shards --manifest "$corpus/train.jsonl" --out "$DATA" \
    --prefix train --shard-size 250 --text-tokenizer phones --no-progress-bar
  tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -cb "$WHEELS" "$DATA" | tail -1 | cut -f1)
  total=$(( (tree_bytes + carried) / 1048576 ))
  echo "working tree $((tree_bytes / 1048576)) MiB + carried $((carried / 1048576)) MiB = $total MiB (limit 64)"
  ((total < 60)) || { echo "error: too close to the device call's 64 MiB" >&2; exit 1; }
  exit 0
fi

if [[ $mode == dry ]]; then
  PYTHON=${PYTHON:-.venv/bin/python}
  OUT=${OUT:-exp/gpu_check_dry}
  budget=${BUDGET:-1500}
  export OMP_NUM_THREADS=1  # other people's jobs share these cores: two threads would mostly wait on each other
else
  PYTHON=${PYTHON:-python3}
  OUT=${OUT:-exp/gpu_check}
  budget=${BUDGET:-450}  # seconds for the parts after install: the whole check stays under 8 minutes
fi
SITE=${SITE:-/tmp/site}
work=${WORK:-/tmp/gpu_check_work}
rm -rf "$work"
mkdir -p "$work" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
summary=()

part() {  # part NAME LIMIT COMMAND...: runs COMMAND with its output in $work/NAME.log, within LIMIT and the budget
  local name=$1 limit=$2 left=$((deadline - SECONDS)) start=$SECONDS rc
  shift 2
  if ((left < 30)); then
    summary+=("$name: skipped, the budget is spent")
    echo "[$name] skipped: the budget is spent"
    return
  fi
  ((limit > left)) && limit=$left
  echo "[$name] $* (limit ${limit} s)"
  timeout --kill-after=15 "$limit" "$@" >"$work/$name.log" 2>&1
  rc=$?
  summary+=("$name: exit $rc after $((SECONDS - start)) s$([[ $rc == 124 || $rc == 137 ]] && echo ' (time limit)')")
  grep -v -i -E "warn|^\[(INFO|WARNING)|^$" "$work/$name.log" | tail -4
}

# install (not counted in the budget: it must run for anything else to)
if [[ $mode == run || -n ${WHEELS_DRY:-} ]]; then
  [[ $mode == dry ]] && WHEELS=$WHEELS_DRY
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    start=$SECONDS
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl >"$work/install.log" 2>&1
    summary+=("install: exit $? after $((SECONDS - start)) s")
    export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
  else
    summary+=("install: no wheels in $WHEELS; using what $PYTHON has")
  fi
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
deadline=$((SECONDS + budget))
{
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PYTHON" - <<'EOF'
import importlib.metadata as metadata, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
for name in ("deepspeed", "transformers", "vector-quantize-pytorch", "torchdiffeq", "omegaconf", "webdataset"):
    print(name, metadata.version(name))
EOF
} >"$work/environment.log" 2>&1
grep -E "^python|H200|NVIDIA-SMI" "$work/environment.log" | head -3

mfu=(benchmarks/mfu.py)
threads=()
if [[ $mode == run ]]; then
  part peak 60 "$PYTHON" "${mfu[@]}" peak --precision bf16 --json "$work/peak.json"
  # Rows of 64 text ids + 448 speech tokens (18 s of speech at 25 Hz) for the LLM, 250 tokens (500 mel frames, 10 s)
  # for the flow; the larger batch of each is the paper recipe's 12,000 mel frames per GPU or more.
  part llm 100 "$PYTHON" "${mfu[@]}" paper --modules llm --batch 16,32 --text-len 64 --speech-len 448 --warmup 3 \
    --steps 8 --json "$work/llm.json"
  part flow 100 "$PYTHON" "${mfu[@]}" paper --modules flow --batch 24,48 --text-len 64 --speech-len 250 --warmup 3 \
    --steps 8 --json "$work/flow.json"
  # Builds the whole paper system (2.2 B parameters) on the host, exports it and loads it on the GPU first.
  part rtf 150 "$PYTHON" benchmarks/rtf.py --preset paper --texts 8 --json "$work/rtf.json"
  scaled=(data.max_frames=12000 data.max_samples=96 data.num_workers=8)  # the tiny recipe's batch: 1500, 12, 1
  steps=(--batches 20)
  recipe=(--steps 60 --skip 10)
else
  threads=(--threads 1)
  part peak 60 "$PYTHON" "${mfu[@]}" peak "${threads[@]}" --json "$work/peak.json"
  part llm 300 "$PYTHON" "${mfu[@]}" paper --config recipes/tiny/config.yaml --modules llm --batch 2,3 \
    --text-len 16 --speech-len 32 --steps 1 "${threads[@]}" --json "$work/llm.json"
  part flow 300 "$PYTHON" "${mfu[@]}" paper --config recipes/tiny/config.yaml --modules flow --batch 2 \
    --text-len 16 --speech-len 32 --steps 1 "${threads[@]}" --json "$work/flow.json"
  part rtf 200 "$PYTHON" benchmarks/rtf.py --preset tiny --texts 2 --device cpu --threads 1 --json "$work/rtf.json"
  scaled=()
  steps=(--batches 2)
  recipe=(--stages joint --steps 6 --skip 1)
fi
if [[ -f $DATA/train.list ]]; then
  part stages 400 "$PYTHON" "${mfu[@]}" stages --shards "$DATA/train.list" --out "$work/stages" "${steps[@]}" \
    "${threads[@]}" --json "$work/stages.json" -- "${scaled[@]}"
  part recipe 300 "$PYTHON" benchmarks/stage_throughput.py --shards "$DATA/train.list" --out "$work/recipe" \
    "${recipe[@]}" --json "$work/recipe.json" -- engine.tensorboard=false "${scaled[@]}"
else
  summary+=("stages, recipe: skipped, no $DATA/train.list (carry it: bash benchmarks/gpu_check.sh --prepare)")
fi

printf '%s\n' "${summary[@]}" >"$work/parts.txt"
"$PYTHON" - "$work" <<'EOF'
"""Collects the parts' JSON into summary.json and a Markdown table into summary.md."""
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])


def rate(flops_per_s: float) -> str:
    return f"{flops_per_s / 1e12:.1f} TFLOP/s" if flops_per_s >= 1e12 else f"{flops_per_s / 1e9:.1f} GFLOP/s"


data = {path.stem: json.loads(path.read_text()) for path in sorted(work.glob("*.json"))}
data["parts"] = (work / "parts.txt").read_text().splitlines()
lines = ["# GPU check", "", *[f"- {line}" for line in data["parts"]], ""]
peak = data.get("peak", {}).get("peak_flops", {})
if peak:
    lines.append(f"matmul peak ({peak['dtype']}): {rate(peak['value'])}\n")
rows = [m for name in ("llm", "flow") for m in data.get(name, {}).get("modules", [])]
if rows:
    lines += ["| module | rows | s/update | tokens or frames/s | model FLOP/s | MFU | peak memory GiB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        units = m.get("tokens_per_s", m.get("mel_frames_per_s"))
        lines.append(f"| {m['module']} ({m['precision']}, ZeRO-{m['zero_stage']}) | {m['batch']} | "
                     f"{m['median_s_per_update']:.3f} | {units:,.0f} | {rate(m['model_flops_per_s'])} | "
                     f"{100 * m['mfu']:.1f} % | {m['peak_memory_gib']:.1f} |")
    lines.append("")
if "rtf" in data:
    r = data["rtf"]
    parts = ", ".join(f"{k} {v:.3f}" for k, v in r["component_rtf"].items())
    lines.append(f"synthesis ({r['source']}, {r['texts']} texts, batch {r['batch_size']}): RTF {r['rtf']:.3f} "
                 f"({parts})\n")
stages = data.get("stages", {}).get("stages", [])
recipe = {row["stage"]: row for row in data.get("recipe", [])}
if stages:
    lines += ["| tiny stage | s/update | mel frames/s | model FLOP/s | MFU | `e2e-tts train` updates/min |",
              "|---|---:|---:|---:|---:|---:|"]
    for s in stages:
        per_min = recipe.get(s["stage"], {}).get("updates_per_min")
        lines.append(f"| {s['stage']} | {s['seconds'] / s['updates']:.3f} | {s['mel_frames_per_s']:,.0f} | "
                     f"{rate(s['model_flops_per_s'])} | {100 * s['mfu']:.1f} % | "
                     f"{'-' if per_min is None else f'{per_min:.0f}'} |")
(work / "summary.json").write_text(json.dumps(data, indent=1))
(work / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
cp "$work/summary.json" "$work/summary.md" "$OUT/"
(cd "$work" && find . -maxdepth 2 \( -name '*.log' -o -name '*.json' -o -name '*.txt' -o -name '*.md' \) -print0 \
  | tar -czf - --null -T -) >"$OUT/logs.tar.gz"
echo "results in $OUT: summary.md, summary.json, logs.tar.gz"
