#!/usr/bin/env bash
# The translation grid on a 2-core CPU: 5 variants x seeds 0 1, 700 steps (docs/experiments.md, "Translation"),
# as two one-thread processes side by side (one per seed, the variants one after another), then one report.
#
#     bash benchmarks/nmt_cpu_grid.sh [OUTPUT_DIR] [STEPS]      # from the repository root; ~84 min for 700 steps
#
# Needs the Bible corpus (Debian libsword-utils sword-text-web sword-text-sparv, or its JSON cache).
set -u
OUTDIR=${1:-runs/nmt-cpu-grid}
STEPS=${2:-700}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
COMMON=(--max-steps "$STEPS" --eval-every $(( STEPS / 2 )) --threads 1 --no-progress --output "$OUTDIR")
mkdir -p "$OUTDIR/logs"
start=$(date +%s)
$PY -m probattn experiment nmt "${COMMON[@]}" --seeds 0 1 --prepare-only > "$OUTDIR/logs/prepare.log" 2>&1 || exit 1
for seed in 0 1; do
  ( for v in softmax svgd spos doubly-encoder alignment; do
      $PY -m probattn experiment nmt "${COMMON[@]}" --variants "$v" --seeds "$seed" --resume --no-report \
        > "$OUTDIR/logs/$v-seed$seed.log" 2>&1
      echo "$v seed $seed: exit $? at $(( $(date +%s) - start )) s"
    done ) &
done
wait
$PY -m probattn experiment nmt "${COMMON[@]}" --seeds 0 1 --resume --report-only > "$OUTDIR/logs/report.log" 2>&1
echo "report: exit $? at $(( $(date +%s) - start )) s; see $OUTDIR/results.md"
