#!/usr/bin/env bash
# One prepared GPU check: the CUDA tests, the attention grid, the training-step benchmark and (when a budget is
# left and benchmarks/nmt_gpu.sh exists) the translation grid. Run from the repository root on a CUDA machine:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh [TOTAL_SECONDS]      # default 540: ends well inside 10 minutes
#
# Everything goes to $OUT (default ./gpu-check): gpu_check.log, attention-gpu.{json,csv}, training-step-gpu.json,
# nmt-gpu.tar.gz. Every stage runs under `timeout`, so the script ends before TOTAL_SECONDS whatever happens, and a
# failing stage does not stop the next one. The attention stage alone takes about 2 minutes on an H100/H200.
set -u
TOTAL=${1:-540}
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
stage() {  # stage NAME SECONDS command...
  local name=$1 seconds=$2; shift 2
  local budget=$(( $(left) - 15 )); (( seconds > budget )) && seconds=$budget
  if (( seconds < 20 )); then echo "== $name: skipped (only $(left) s left)" | tee -a "$LOG"; return; fi
  echo "== $name (at most ${seconds} s, $(left) s left)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=5 "$seconds" "$@" >>"$LOG" 2>&1
  echo "== $name: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"
stage import 60 $PY -c "import probattn, probattn.functional.fused; print('probattn', probattn.__version__)"
stage gpu-tests 90 $PY -m pytest -q -p no:cacheprovider -m gpu -rf -W ignore::UserWarning tests/
tail -n 3 "$LOG"
RES=$(mktemp -d)
stage attention-grid 150 $PY benchmarks/attention_gpu.py --out "$RES"
cp "$RES"/attention-gpu-*.json "$OUT/attention-gpu.json" 2>/dev/null
cp "$RES"/attention-gpu-*.csv "$OUT/attention-gpu.csv" 2>/dev/null
stage training-step 60 $PY benchmarks/training_step.py --device cuda --autocast bf16 --lengths 128 512 2048 \
  --batch 16 --steps 5 --out "$RES"
cp "$RES"/training-step-gpu-*.json "$OUT/training-step-gpu.json" 2>/dev/null
grep -E "^\| " "$LOG" | tail -n 20
if [[ -f benchmarks/nmt_gpu.sh ]] && (( $(left) > 90 )); then
  budget=$(( $(left) - 20 ))
  echo "== nmt grid: budget ${budget} s" | tee -a "$LOG"
  bash benchmarks/nmt_gpu.sh "$budget" 2>&1 | tee -a "$LOG" | tail -n 40
fi
echo "== done after $(( $(date +%s) - START )) s" | tee -a "$LOG"
ls -la "$OUT"
exit 0
