#!/usr/bin/env bash
# Every GPU check of lmlab in one call on a bare GPU machine: the `-m gpu` tests and the GPU rows of
# benchmarks/train_step.py, decode.py and startup.py, each result a JSON file under $OUT.
#
#   bash benchmarks/gpu.sh --wheels      # here, with network: the wheels the GPU machine lacks, into .whl/
#   bash benchmarks/gpu.sh               # there (no network): install them, run everything (< 8 minutes)
#   bash benchmarks/gpu.sh --cpu-check   # anywhere: the same steps with tiny shapes, to check the script
#
# The GPU machine has its own torch, lightning and transformers but no hydra-core, omegaconf or wandb:
# the wheels in .whl/ (git-ignored; carry it) are installed into $SITE, and runs log to CSV
# (logger=csv) instead of W&B. Every part has its own time limit, so one slow part cannot eat the
# others' time; a part that fails or times out keeps its log (and what it measured) under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--wheels" ]]; then
  rm -rf .whl && mkdir .whl
  # pure-Python wheels for the GPU machine's Python 3.12 (antlr4 has no wheel on the index: built here)
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d .whl hydra-core==1.3.8 omegaconf==2.3.1 rich markdown-it-py mdurl pygments \
    pytest pluggy iniconfig
  $PY -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
  ls .whl
  exit 0
fi

# the GPU rows; --cpu-check shrinks every shape and runs the benchmarks' --smoke modes
model=gpt_small seq=1024 batch=16 precision=bf16-mixed decode_configs=(gpt_small:1,8,32) check=() scale=1
if [[ "${1:-}" == "--cpu-check" ]]; then  # CPUs have no fast bf16, and a shared CPU needs longer limits
  model=gpt_tiny seq=32 batch=4 precision=32-true decode_configs=(gpt_tiny:1) check=(--smoke) scale=${SCALE:-4}
fi

OUT=${OUT:-/tmp/lmlab_gpu}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
START=$SECONDS
log() { echo "[gpu.sh $((SECONDS - START))s] $*" | tee -a "$OUT/gpu_sh.log"; }

# hydra with the exact omegaconf and antlr4 it needs (another antlr4 breaks omegaconf's parser); of the
# rest only what is missing, so that the machine's own packages stay in charge
wheels=(.whl/hydra_core-*.whl .whl/omegaconf-*.whl .whl/antlr4_python3_runtime-*.whl)
for spec in rich:rich markdown_it:markdown_it_py mdurl:mdurl pygments:pygments pytest:pytest pluggy:pluggy \
            iniconfig:iniconfig; do
  module=${spec%%:*} wheel=${spec##*:}
  $PY -c "import $module" 2>/dev/null || wheels+=(.whl/${wheel}-*.whl)
done
log "installing ${wheels[*]}"
$PY -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}" 2>>"$OUT/gpu_sh.log" \
  || log "pip install failed"
export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
$PY - <<'EOF' | tee "$OUT/environment.json"
import json, platform, torch, lightning, transformers
print(json.dumps(dict(python=platform.python_version(), torch=torch.__version__, lightning=lightning.__version__,
                      transformers=transformers.__version__, cuda=torch.version.cuda,
                      device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)))
EOF

part() {  # part <name> <seconds> <command...>: stdout -> $OUT/<name>.json, stderr -> $OUT/<name>.log
  local name=$1 limit=$(($2 * scale))
  shift 2
  log "$name (limit ${limit}s)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
  log "$name: exit $? after $((SECONDS - START))s"
}

# 1. the GPU tests (compiled decoding replays CUDA graphs with eager's tokens; no sync between logging steps)
part pytest_gpu 90 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_static_cache.py \
  tests/test_train_step.py tests/test_optim.py tests/test_stability.py
mv "$OUT/pytest_gpu.json" "$OUT/pytest_gpu.txt"

# 2. decoding, GPT-2 124M shape in bf16: eager vs static cache + compiled step vs generate()
part decode 150 $PY benchmarks/decode.py --configs "${decode_configs[@]}" --strategies greedy sample \
  --new-tokens 128 --repeats 2 --generate-static-batches 1 --sections vs_generate "${check[@]}"

# 3. the training step, gpt_small at sequence 1024 in bf16: plain loop vs Lightning vs HF, then compiled
common=(--model "$model" --seq-len "$seq" --batch-size "$batch" --precision "$precision" --warmup 5 --steps 10
        --override logger=csv "${check[@]}")
part train_step_eager 100 $PY benchmarks/train_step.py "${common[@]}" --repeats 2
part train_step_compiled 100 $PY benchmarks/train_step.py "${common[@]}" --repeats 1 --compile \
  --variants plain lit

# 4. start-up to the first optimizer step (default config, CSV logger instead of W&B)
part startup 60 $PY benchmarks/startup.py --repeats 2 --override logger=csv "${check[@]}"

# 5. speculative decoding with a distilled draft, with the time left of the whole call's 8 minutes
left=$((${TOTAL:-470} * scale - (SECONDS - START)))
if ((left > 40)); then
  part speculative "$left" $PY benchmarks/decode.py --sections speculative --spec-model "$model" \
    --train-steps 100 --new-tokens 64 --repeats 1 --override logger=csv "${check[@]}"
fi
log "done"
