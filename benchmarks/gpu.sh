#!/usr/bin/env bash
# Every GPU check of lmlab in one call on a bare GPU machine: the `-m gpu` tests and the GPU rows of
# benchmarks/train_step.py, decode.py and startup.py, each result a JSON file under $OUT.
#
#   bash benchmarks/gpu.sh --wheels      # here, with network: the wheels the GPU machine lacks, into .whl/
#   bash benchmarks/gpu.sh               # there (no network): install them, run everything (< 8 minutes)
#
# The GPU machine has its own torch, lightning and transformers but no hydra-core, omegaconf or wandb:
# the wheels in .whl/ (git-ignored; carry it) are installed into /tmp/site, and runs log to CSV
# (logger=csv) instead of W&B. Every part has its own time limit, so one slow part cannot eat the
# others' time; a part that fails or times out leaves its log under $OUT and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--wheels" ]]; then
  rm -rf .whl && mkdir .whl
  # pure-Python wheels for the GPU machine's Python 3.12 (antlr4 has no wheel on the index: built here)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d .whl hydra-core==1.3.8 omegaconf==2.3.1 rich markdown-it-py mdurl pygments \
    pytest pluggy iniconfig
  python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
  ls .whl
  exit 0
fi

OUT=${OUT:-/tmp/lmlab_gpu}
mkdir -p "$OUT"
START=$SECONDS
log() { echo "[gpu.sh $((SECONDS - START))s] $*" | tee -a "$OUT/gpu_sh.log"; }

# only what is missing: the machine's own packages stay in charge
missing=()
for spec in hydra:hydra_core omegaconf:omegaconf antlr4:antlr4_python3_runtime rich:rich \
            markdown_it:markdown_it_py mdurl:mdurl pygments:pygments pytest:pytest pluggy:pluggy \
            iniconfig:iniconfig; do
  module=${spec%%:*} wheel=${spec##*:}
  python3 -c "import $module" 2>/dev/null || missing+=(.whl/${wheel}-*.whl)
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "${missing[@]}" || log "pip install failed"
fi
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
python3 - <<'EOF' | tee "$OUT/environment.json"
import json, platform, torch, lightning, transformers
print(json.dumps(dict(python=platform.python_version(), torch=torch.__version__, lightning=lightning.__version__,
                      transformers=transformers.__version__, cuda=torch.version.cuda,
                      device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)))
EOF

part() {  # part <name> <seconds> <command...>: stdout -> $OUT/<name>.json, stderr -> $OUT/<name>.log
  local name=$1 limit=$2
  shift 2
  log "$name (limit ${limit}s)"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
  log "$name: exit $? after $((SECONDS - START))s"
}

# 1. the GPU tests (compiled decoding replays CUDA graphs with eager's tokens; no sync between logging steps)
part pytest_gpu 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_static_cache.py \
  tests/test_train_step.py tests/test_optim.py tests/test_stability.py
mv "$OUT/pytest_gpu.json" "$OUT/pytest_gpu.txt"

# 2. decoding, GPT-2 124M shape in bf16: eager vs static cache + compiled step vs generate()
part decode 170 python3 benchmarks/decode.py --configs gpt_small:1,8,32 --strategies greedy sample \
  --new-tokens 128 --repeats 2 --generate-static-batches 1 --sections vs_generate

# 3. the training step, gpt_small at sequence 1024 in bf16: plain loop vs Lightning vs HF, then compiled
common=(--model gpt_small --seq-len 1024 --batch-size 16 --precision bf16-mixed --warmup 5 --steps 10
        --override logger=csv)
part train_step_eager 80 python3 benchmarks/train_step.py "${common[@]}" --repeats 2
part train_step_compiled 110 python3 benchmarks/train_step.py "${common[@]}" --repeats 1 --compile \
  --variants plain lit default

# 4. start-up to the first optimizer step (default config, CSV logger instead of W&B)
part startup 50 python3 benchmarks/startup.py --repeats 2 --override logger=csv

# 5. speculative decoding with a distilled draft, if time is left (the call's limit is 10 minutes)
left=$((560 - (SECONDS - START)))
if ((left > 40)); then
  part speculative "$left" python3 benchmarks/decode.py --sections speculative --spec-model gpt_small \
    --train-steps 100 --new-tokens 64 --repeats 1 --override logger=csv
fi
log "done"
