#!/usr/bin/env bash
# The translation grid of `probattn experiment nmt` (5 variants x seeds 0 1) on ONE GPU within a wall-clock budget.
#
#   PROBATTN_CACHE=$PWD/.carry/probattn-cache OUT=/some/empty/folder bash benchmarks/nmt_gpu.sh BUDGET_SECONDS
#
# Run from the repository root (python3, PYTHONPATH=$PWD/src; no install, no internet: the Bible export must be in
# $PROBATTN_CACHE/bible). Steps: (a) a tiny CUDA smoke run of every variant (stops here if it fails), beside (b) one
# --prepare-only process that writes the shared tokenizer and baselines; (c) calibration: all workers (one process per
# (variant, seed), one thread each) train together for a few steps, benchmarks/nmt_gpu_plan.py measures their
# step rates and picks ONE step count N (a multiple of 100, the same for every variant) that fits the time left;
# (d) the workers run N steps concurrently, each under `timeout`; (e) one --report-only process builds results.md;
# (f) results, run files, plots, logs (no checkpoints) go into $OUT/nmt-gpu.tar.gz. Always exits 0.
# CPU rehearsal (docs/experiments.md, "Translation"): NMT_GPU_DEVICE=cpu NMT_GPU_DATA=sample NMT_GPU_SIZE=tiny
# NMT_GPU_EXTRA="--vocab-size 300 --max-tokens 400 ..." bash benchmarks/nmt_gpu.sh 120
set -u
BUDGET=${1:-240}
START=$(date +%s.%N)
PY=${NMT_GPU_PYTHON:-python3}
DEVICE=${NMT_GPU_DEVICE:-cuda}
DATA=${NMT_GPU_DATA:-bible}
SIZE=${NMT_GPU_SIZE:-small}
EXTRA=${NMT_GPU_EXTRA:-}                         # extra options of every full and calibration run
VARIANTS=${NMT_GPU_VARIANTS:-softmax svgd spos doubly-encoder alignment}
SEEDS=${NMT_GPU_SEEDS:-0 1}
CAL_STEPS=${NMT_GPU_CALIBRATION_STEPS:-40}
CAL_TEST=${NMT_GPU_CALIBRATION_TEST:-32}         # test pairs decoded in the calibration (scaled to all)
MAX_N=${NMT_GPU_MAX_STEPS:-2000}
RESERVE=${NMT_GPU_RESERVE:-25}                   # seconds kept for the report and the archive
WORK=${NMT_GPU_WORK:-$(mktemp -d /tmp/nmt-gpu.XXXXXX)}
OUT=${OUT:-$WORK/out}
EXP=$WORK/experiment CAL=$WORK/calibration LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS" "$WORK/times-calibration" "$WORK/times-full"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ "$DEVICE" = "${DEVICE#cuda}" ] || export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
COMMON=(--data "$DATA" --size "$SIZE" --schedule gpu --device "$DEVICE" --threads 1 --no-progress)
[ "${NMT_GPU_TF32:-1}" = 1 ] && COMMON+=(--tf32)   # NMT_GPU_TF32=0: full float32 matmuls
read -r -a EXTRA_ARGS <<< "$EXTRA"
read -r -a VARIANT_LIST <<< "$VARIANTS"
read -r -a SEED_LIST <<< "$SEEDS"

now() { date +%s.%N; }
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$START" "$(now)"; }
left() { "$PY" -c "import sys; print(max(5, int(float(sys.argv[1]) + float(sys.argv[2]) - float(sys.argv[3]))))" \
    "$START" "$BUDGET" "$(now)"; }
say() { echo "[nmt-gpu $(elapsed)s/${BUDGET}s] $*"; }

# one worker in the background: `worker NAME TIMES_DIR LIMIT ARGS...` writes "launch end status" into TIMES_DIR/NAME
worker() {
    local name=$1 times=$2 limit=$3; shift 3
    (
        launch=$(now)
        timeout --kill-after=5 "$limit" "$PY" -m probattn experiment nmt "$@" > "$LOGS/$(basename "$times")-$name.log" 2>&1
        status=$?
        echo "$launch $(now) $status" > "$times/$name"
    ) &
}

finish() {  # (f): archive whatever exists, print the summary, exit 0
    say "archiving into $OUT/nmt-gpu.tar.gz"
    local files=()
    for f in experiment/results.md experiment/results.json experiment/val_bleu.png experiment/prepared.json \
             experiment/runs calibration/runs logs plan.txt times-calibration times-full; do
        [ -e "$WORK/$f" ] && files+=("$f")
    done
    tar -czf "$OUT/nmt-gpu.tar.gz" -C "$WORK" --exclude='checkpoints' --exclude='*.safetensors' "${files[@]}" \
        2> "$LOGS/tar.err" || say "tar reported a problem: $(head -c 300 "$LOGS/tar.err")"
    ls -l "$OUT/nmt-gpu.tar.gz" 2> /dev/null
    if [ -d "$EXP/runs" ]; then
        say "summary of $EXP (N = ${N:-?} steps):"
        "$PY" benchmarks/nmt_gpu_plan.py summary "$EXP"
        [ -f "$EXP/results.md" ] && sed -n '/^## Test books/,/^## Head diversity/p' "$EXP/results.md" | head -n 14
    fi
    say "done (work folder $WORK)"
    exit 0
}

say "device $DEVICE, data $DATA, size $SIZE, variants: $VARIANTS; seeds: $SEEDS; work $WORK"
[ "$DATA" != bible ] || [ -n "${PROBATTN_CACHE:-}" ] || say "warning: PROBATTN_CACHE is not set (default cache)"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# (a) smoke test (GPU) and (b) the shared files (CPU: tokenizer, baselines), side by side
say "(a) smoke test: every variant, 2 steps, tiny model, --data sample, --device $DEVICE; (b) preparing $EXP"
timeout --kill-after=5 90 "$PY" -m probattn experiment nmt --data sample --size tiny --device "$DEVICE" --threads 1 \
    --no-progress --variants "${VARIANT_LIST[@]}" --seeds 0 --max-steps 2 --max-tokens 400 --vocab-size 300 \
    --eval-every 2 --validation-examples 4 --test-examples 4 --beam 2 --output "$WORK/smoke" > "$LOGS/smoke.log" 2>&1 &
smoke=$!
timeout --kill-after=5 "$(( $(left) > RESERVE + 10 ? $(left) - RESERVE : 10 ))" "$PY" -m probattn experiment nmt \
    "${COMMON[@]}" "${EXTRA_ARGS[@]}" --variants "${VARIANT_LIST[@]}" --seeds "${SEED_LIST[@]}" --output "$EXP" \
    --prepare-only > "$LOGS/prepare.log" 2>&1
prepared=$?
wait $smoke
status=$?
if [ $status -ne 0 ]; then
    say "SMOKE TEST FAILED (exit $status): the NMT stage stops here. Last lines of logs/smoke.log:"
    tail -n 25 "$LOGS/smoke.log"
    finish
fi
say "smoke test passed"
[ $prepared -eq 0 ] || { say "PREPARE FAILED (exit $prepared):"; tail -n 25 "$LOGS/prepare.log"; finish; }
TEST_PAIRS=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['test_examples'])" "$EXP/prepared.json")
mkdir -p "$CAL" && cp "$EXP/tokenizer.json" "$CAL/"

# (c) calibration: every worker together for CAL_STEPS steps (same options, fewer test pairs)
say "(c) calibration: ${#VARIANT_LIST[@]} variants x ${#SEED_LIST[@]} seeds together, $CAL_STEPS steps each"
limit=$(( $(left) > RESERVE + 10 ? $(left) - RESERVE : 10 ))
for v in "${VARIANT_LIST[@]}"; do for s in "${SEED_LIST[@]}"; do
    worker "$v-seed$s" "$WORK/times-calibration" "$limit" "${COMMON[@]}" "${EXTRA_ARGS[@]}" --variants "$v" \
        --seeds "$s" --max-steps "$CAL_STEPS" --eval-every "$CAL_STEPS" --test-examples "$CAL_TEST" \
        --output "$CAL" --resume --no-report
done; done
wait
"$PY" benchmarks/nmt_gpu_plan.py plan --calibration "$CAL" --times "$WORK/times-calibration" \
    --calibration-steps "$CAL_STEPS" --test-pairs "$TEST_PAIRS" --now "$(now)" \
    --deadline "$("$PY" -c "import sys; print(float(sys.argv[1]) + float(sys.argv[2]) - float(sys.argv[3]))" \
    "$START" "$BUDGET" "$RESERVE")" --max-steps "$MAX_N" > "$WORK/plan.txt" 2>&1
cat "$WORK/plan.txt"
N=$(sed -n 's/^STEPS=//p' "$WORK/plan.txt" | tail -n 1)
if [ -z "$N" ] || [ "$N" -lt 100 ]; then
    say "NO STEP COUNT FITS the budget left (see the calibration above and logs/times-calibration-*.log)"
    finish
fi
EVAL=$(( N / 4 )) WARMUP=$(( N / 5 ))

# (d) the grid: every worker N steps, together, each under timeout
limit=$(( $(left) > RESERVE + 10 ? $(left) - RESERVE : 10 ))
say "(d) full runs: N = $N steps, warm-up $WARMUP, validation every $EVAL steps, timeout ${limit}s per worker"
for v in "${VARIANT_LIST[@]}"; do for s in "${SEED_LIST[@]}"; do
    worker "$v-seed$s" "$WORK/times-full" "$limit" "${COMMON[@]}" "${EXTRA_ARGS[@]}" --variants "$v" --seeds "$s" \
        --max-steps "$N" --eval-every "$EVAL" --warmup-steps "$WARMUP" --output "$EXP" --resume --no-report
done; done
wait
for f in "$WORK"/times-full/*; do
    read -r launch end status < "$f"
    name=$(basename "$f")
    if [ "$status" -ne 0 ]; then
        say "worker $name FAILED or timed out (exit $status); last lines of logs/times-full-$name.log:"
        tail -n 6 "$LOGS/times-full-$name.log"
    fi
done

# (e) the report, from the finished runs, in one process
say "(e) report"
timeout --kill-after=3 "$(( $(left) > 10 ? $(left) - 5 : 5 ))" "$PY" -m probattn experiment nmt "${COMMON[@]}" \
    "${EXTRA_ARGS[@]}" --variants "${VARIANT_LIST[@]}" --seeds "${SEED_LIST[@]}" --max-steps "$N" \
    --eval-every "$EVAL" --warmup-steps "$WARMUP" --output "$EXP" --resume --report-only > "$LOGS/report.log" 2>&1 \
    || { say "REPORT FAILED:"; tail -n 15 "$LOGS/report.log"; }
finish
