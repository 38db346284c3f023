#!/usr/bin/env bash
# GPU verification of the trainer on one CUDA machine, in bounded stages (see docs/GPU.md).
#
#   OUT=/tmp/wsm-gpu bash bench/gpu_verify.sh env tests train eval export bench merge
#
# Missing Python packages may travel as wheels in .whl/ (installed into /tmp/site). Logs go to
# $OUT/<stage>.log; the store and data cache live under $WSM_GPU_DIR (default /tmp/wsm-gpu-work).
set -u -o pipefail
OUT=${OUT:-/tmp/wsm-gpu}
WORK=${WSM_GPU_DIR:-/tmp/wsm-gpu-work}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export WSM_STORE_URL="$WORK/store" WSM_CACHE_DIR="$WORK/cache"
if [ -d .whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD || export PYTHONPATH=$PWD

RUN=gpu125m
# ~125M-parameter Llama (preset 125m, 32k BPE on the built-in corpus), 65,536 tokens/step.
TRAIN_SET=(--config demo --set run=$RUN --set model.preset=125m --set data.vocab_size=32768
  --set micro_batch_size=16 --set global_batch_size=32 --set optim.lr=6e-4 --set schedule.warmup=2M
  --set checkpoint.save_every=10M --set log_every=20 --set threads=8 --set data.valid_samples=64
  --set parallel.distributed_optimizer=true)
# Local dry runs: TRAIN_EXTRA="--set model.preset=tiny --set device=cpu ..." DEVICE=cpu
read -r -a EXTRA <<< "${TRAIN_EXTRA:-}"
TRAIN_SET+=("${EXTRA[@]}")
DEVICE=${DEVICE:-cuda}
INT_AFTER=${INT_AFTER:-150}

TESTS=${TESTS:-tests/trainer}
# The whole script ends within DEADLINE seconds: each stage's timeout is cut to what is left.
DEADLINE=${DEADLINE:-100000}
START=$(date +%s)
budget() { local left=$((DEADLINE - ($(date +%s) - START) - 10)); echo $((left < $1 ? left : $1)); }
stage() { echo "=== $1 $(date +%T), $(budget 100000) s left"; }

for s in "$@"; do
  if [ "$(budget 100000)" -lt 30 ]; then echo "=== $s skipped: DEADLINE"; continue; fi
  case $s in
  env)
    {
      stage env
      nvidia-smi
      python3 - <<'EOF'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
print("capability", torch.cuda.get_device_capability(), "bf16", torch.cuda.is_bf16_supported())
for m in ("transformer_engine", "apex", "flash_attn", "megatron.core", "pydantic", "transformers", "triton"):
    print(m, "present" if importlib.util.find_spec(m) else "absent")
import megatron.core, transformers
print("megatron-core", megatron.core.__version__, "transformers", transformers.__version__)
EOF
    } 2>&1 | tee "$OUT/env.log"
    ;;
  tests)
    { stage tests
      timeout $(budget 300) python3 -m pytest $TESTS -v -p no:cacheprovider -o timeout=240 --durations=25 -rs
      echo "pytest rc=$?"; } 2>&1 | tee "$OUT/tests.log" | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|rc=" | tail -40
    ;;
  train)
    { stage "train (SIGINT after $INT_AFTER s: final checkpoint)"
      timeout -s INT $(budget "$INT_AFTER") python3 -m wsm.cli train "${TRAIN_SET[@]}"
      echo "train rc=$?"
      tokens=$(python3 -c "from wsm.store import open_store; print(open_store().latest_checkpoint('$RUN').tokens)")
      stage "resume under torchrun, one rank, from $tokens tokens"
      timeout $(budget 150) torchrun --standalone --nproc-per-node 1 -m wsm.cli train "${TRAIN_SET[@]}" \
        --set train_tokens=$((tokens + 1310720))
      echo "resume rc=$?"
      ls -la "$WORK/store/runs/$RUN/checkpoints/"*/ | head -40
      nvidia-smi --query-gpu=memory.used,memory.total --format=csv; } 2>&1 | tee "$OUT/train.log" | grep -vE "^\s*$" | grep -E "step [0-9]*0 \||checkpoint|resumed|model:|rc=|Error|error" | tail -40
    ;;
  eval)
    { stage eval
      time timeout $(budget 400) python3 -m wsm.cli evaluate $RUN/latest --set device=$DEVICE --json
      echo "eval rc=$?"; } 2>&1 | tee "$OUT/eval.log" | grep -vE "evaluate .*%$" | tail -60
    ;;
  export)
    { stage export
      rm -rf "$WORK/hf"
      timeout $(budget 200) python3 bench/gpu_export.py --store "$WORK/store" --model $RUN/latest --out "$WORK/hf" --device $DEVICE
      echo "export rc=$?"; } 2>&1 | tee "$OUT/export.log" | tail -30
    ;;
  bench)
    { stage bench-train
      timeout $(budget 400) python3 bench/train.py --device cuda --threads 8 --steps 20 --rounds 2 \
        --set model.preset=125m --set data.vocab_size=32768 --set micro_batch_size=16 \
        --set global_batch_size=32 --set checkpoint.save_every=655360 --json "$OUT/bench_train.json"
      echo "bench rc=$?"; } 2>&1 | tee "$OUT/bench.log" | tail -40
    ;;
  merge)
    { stage merge
      timeout $(budget 300) python3 bench/merge.py --count 8 --size-gb 0.5 --repeat 2 --methods floor,ours,cli,naive
      echo "merge rc=$?"; } 2>&1 | tee "$OUT/merge.log" | tail -30
    ;;
  *) echo "unknown stage $s"; exit 2 ;;
  esac
done
