#!/usr/bin/env bash
# The exact recipe of reports/ablation-hcc: the synthetic cohorts and teachers of the demo
# recipe (seed 7), then `reactkd ablation` over seeds 0 1 2. On CPU it runs one ablation
# process per core (they share the runs out; the last to finish writes the table): about
# 1.5 hours on 2 cores. Everything is SYNTHETIC data.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/ablation}
OUT=${OUT:-reports/ablation-hcc}
SEED=${SEED:-7}
JOBS=${JOBS:-$(nproc)}
HCC="$WORK/hcc/manifest.csv"
EXT="$WORK/hcc_ext/manifest.csv"
T="$WORK/teachers"

[ -f "$HCC" ] || $BIN/reactkd synth hcc --out "$WORK/hcc" --cases 200 --seed "$SEED"
[ -f "$EXT" ] || $BIN/reactkd synth hcc --out "$WORK/hcc_ext" --cases 60 --seed "$SEED" --external
for kind in sf dose; do
  config=configs/demo/hcc_teacher_$kind.yaml
  name=$([ $kind = sf ] && echo structure-function || echo dose-aware)
  [ -f "$T/hcc-$name-s$SEED/best.pt" ] || $BIN/reactkd train teacher --config "$config" --data "$HCC" --out "$T" --seed "$SEED"
done
for _ in $(seq "$JOBS"); do
  OMP_NUM_THREADS=1 $BIN/reactkd ablation --task hcc --config configs/ablation/hcc_student.yaml \
    --data "$HCC" --external "$EXT" --seeds 0 1 2 --out "$OUT" \
    --teachers "$T/hcc-structure-function-s$SEED/best.pt" "$T/hcc-dose-aware-s$SEED/best.pt" &
  sleep 5
done
wait
# The last process to finish wrote the complete table; one more call (every run done) makes
# sure of it, whichever process finished last.
$BIN/reactkd ablation --task hcc --config configs/ablation/hcc_student.yaml \
  --data "$HCC" --external "$EXT" --seeds 0 1 2 --out "$OUT" \
  --teachers "$T/hcc-structure-function-s$SEED/best.pt" "$T/hcc-dose-aware-s$SEED/best.pt"
