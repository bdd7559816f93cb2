#!/usr/bin/env bash
# One-shot head training on a GPU: the same pipeline as `make train` (fresh data the target writes,
# then training) with GPU-sized batches and budgets, and a report back. Sized for a short lease
# (about 12 minutes with start-up). Not yet run on a GPU: no lease has been drawn for it.
#
#   scripts/gpu_train.sh                         # eagle3 on the embedded target
#   ARCH=eagle1 TRAIN_MIN=6 scripts/gpu_train.sh # the other head kind
#   DEVICE=cpu ... scripts/gpu_train.sh          # the same script on a CPU (budgets in minutes)
#
# Needs the project's Python deps and the embedded model (`make setup`); nothing is downloaded.
# Writes $OUT/head (official format, report.json, TRAINING.md, train_tokens.npz) and $OUT/train.log,
# which ends with both heads' top-1 by draft step on the fixed held-out set (heldout_tokens.npz).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
ARCH="${ARCH:-eagle3}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-runs/gpu-train-$(date +%Y%m%d-%H%M%S)}"
PROMPT_MIN="${PROMPT_MIN:-1.5}"; ANSWER_MIN="${ANSWER_MIN:-2}"; TASK_MIN="${TASK_MIN:-2}"; TRAIN_MIN="${TRAIN_MIN:-5}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
{
  echo "== $(date -u +%FT%TZ) device=$DEVICE arch=$ARCH"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  # big batches: a GPU writes answers far faster than the 2-core CPU the defaults are sized for
  "$PY" -m eagle2 train --out "$OUT/run" --arch "$ARCH" --device "$DEVICE" --threads 0 \
      --n-prompts 20000 --prompt-batch 256 --prompt-minutes "$PROMPT_MIN" \
      --answer-batch 256 --answer-minutes "$ANSWER_MIN" --n-tasks 20000 --task-minutes "$TASK_MIN" \
      --feature-batch-tokens 32768 --batch-tokens 16384 --train-minutes "$TRAIN_MIN" --eval-every 1 \
      --exclude-prompts eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz --head-out "$OUT/head"
  # the new head and the shipped one on the fixed held-out set (the same sequences every round)
  "$PY" scripts/eval_heads.py "$OUT/heldout" "$OUT/head" eagle2/heads/smollm2-135m-instruct \
      --heldout eagle2/heads/smollm2-135m-instruct/heldout_tokens.npz --arch "$ARCH"
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/train.log"
