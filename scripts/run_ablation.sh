#!/usr/bin/env bash
# The exact recipe of reports/ablation-hcc and reports/ablation-brats: the synthetic cohorts
# and teachers of the demo recipe (seed 7), then `reactkd ablation` over seeds 0 1 2.
#   TASK=hcc bash scripts/run_ablation.sh     (the default; about 1.5 hours on 2 cores)
#   TASK=brats bash scripts/run_ablation.sh
#   GRID=lesion bash scripts/run_ablation.sh  (HCC on the lesion grid: reports/ablation-hcc-lesion)
#   GRID=lesion JUDGE_CASES=300 bash scripts/run_ablation.sh  (and judged again on 300 fresh cases;
#     TASK=brats JUDGE_CASES=330 too)
#   GRID=lesion CASES=500 JUDGE_CASES=300 bash scripts/run_ablation.sh  (a larger cohort: its own
#     cohort, teachers and report folder, reports/ablation-hcc-lesion-500)
#   ... VARIANT=ct_half ...  (the recipe of configs/ablation/hcc_lesion_student_ct_half.yaml;
#     report folder suffixed -ct-half; VARIANT=ct_only: no modality dropout, the full method
#     a CT-only student). A variant's steps without the part it changes have the base's
#     configs: the reports copied those runs into OUT/runs before starting, training none twice.
#   ... STEPS=scratch ...  (scratch and the full method only; STEPS="scratch +kd" adds that step)
#   ... JUDGE_SEED=9 ...  (judged on another fresh cohort: judge-300-s9, judged-300-s9)
#   ... JUDGE_CASES=1000 JUDGE_SEED=10 ...  (1000 fresh internal and 400 external cases: a gain
#     of 0.02 is then told from the test set's sampling error, which 300 cases could not)
# On CPU it runs one ablation process per core (they share the runs out; the last to finish
# writes the table). Everything is SYNTHETIC data.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
TASK=${TASK:-hcc}
GRID=${GRID:-whole}
WORK=${WORK:-build/ablation}
SEED=${SEED:-7}
# The cohort's size: HCC 200 and BraTS 360 (drawn balanced, as the demo's) by default; another size gets its own cohort,
# teachers and report folder (suffix -CASES), so no run mixes cohorts.
CASES=${CASES:-}
JOBS=${JOBS:-$(nproc)}
# Another grid: the teachers are other networks (their demo configs, their own folder), and
# config files and run names carry the grid (hcc_lesion_student.yaml, hcc-lesion-dose-aware).
SUFFIX="" RUN=""
[ "$GRID" = whole ] || { SUFFIX="_$GRID"; RUN="$GRID-"; }
C=${CASES:+-$CASES}
VARIANT=${VARIANT:-}
V=${VARIANT:+-${VARIANT//_/-}}
OUT=${OUT:-reports/ablation-$TASK${SUFFIX/_/-}$C$V}
CONFIG="configs/ablation/${TASK}${SUFFIX}_student${VARIANT:+_$VARIANT}.yaml"
T="$WORK/teachers$SUFFIX$C"

teacher() {  # teacher CONFIG NAME DATA: train it unless its checkpoint is there
  [ -f "$T/$2-s$SEED/best.pt" ] || $BIN/reactkd train teacher --config "$1" --data "$3" --out "$T" --seed "$SEED" >&2
  echo "$T/$2-s$SEED/best.pt"
}

case "$TASK" in
hcc)
  DATA="$WORK/hcc$C/manifest.csv"
  EXT="$WORK/hcc_ext/manifest.csv"
  [ -f "$DATA" ] || $BIN/reactkd synth hcc --out "$WORK/hcc$C" --cases "${CASES:-200}" --seed "$SEED"
  [ -f "$EXT" ] || $BIN/reactkd synth hcc --out "$WORK/hcc_ext" --cases 60 --seed "$SEED" --external
  TEACHERS=("$(teacher "configs/demo/hcc${SUFFIX}_teacher_sf.yaml" "hcc-${RUN}structure-function" "$DATA")"
            "$(teacher "configs/demo/hcc${SUFFIX}_teacher_dose.yaml" "hcc-${RUN}dose-aware" "$DATA")")
  EXTRA=(--external "$EXT")
  ;;
brats)  # the demo's cohort and grid; BraTS has no external cohort and no dose step
  BRATS_GRID="--shape 96 96 64 --spacing 2.5"
  DATA="$WORK/brats$C"
  [ -d "$DATA/HGG" ] || $BIN/reactkd synth brats --out "$DATA" --cases "${CASES:-360}" --seed "$SEED" $BRATS_GRID \
    --lgg-fraction 0.5
  TEACHERS=("$(teacher "configs/demo/brats${SUFFIX}_teacher_hybrid.yaml" "brats-${RUN}hybrid" "$DATA")")
  EXTRA=()
  ;;
*) echo "TASK must be hcc or brats, got $TASK" >&2; exit 2 ;;
esac

ablation() {
  $BIN/reactkd ablation --task "$TASK" --config "$CONFIG" \
    --data "$DATA" "${EXTRA[@]}" --seeds 0 1 2 --out "$OUT" --teachers "${TEACHERS[@]}" ${STEPS:+--steps $STEPS}
}
for _ in $(seq "$JOBS"); do
  OMP_NUM_THREADS=1 ablation &
  sleep 5
done
wait
# The last process to finish wrote the complete table; one more call (every run done) makes
# sure of it, whichever process finished last.
ablation

# JUDGE_CASES=300: judge the same networks again on a fresh cohort from the generator
# (seed JUDGE_SEED, SEED+1 by default: every labelled case; HCC also a fresh external cohort
# of JUDGE_CASES/2.5 cases), training nothing: $OUT/judged-$JUDGE_CASES. Thirty test cases
# judge noisily, and one fresh cohort differs from another by more than the seeds do.
if [ -n "${JUDGE_CASES:-}" ]; then
  JUDGE_SEED=${JUDGE_SEED:-$((SEED + 1))}
  S=""
  [ "$JUDGE_SEED" = $((SEED + 1)) ] || S="-s$JUDGE_SEED"
  J="$WORK/judge-$JUDGE_CASES$S"
  if [ "$TASK" = hcc ]; then
    [ -f "$J/hcc/manifest.csv" ] || $BIN/reactkd synth hcc --out "$J/hcc" --cases "$JUDGE_CASES" --seed "$JUDGE_SEED"
    [ -f "$J/hcc_ext/manifest.csv" ] ||
      $BIN/reactkd synth hcc --out "$J/hcc_ext" --cases $((JUDGE_CASES * 2 / 5)) --seed "$JUDGE_SEED" --external
    JUDGED=(--external "$J/hcc_ext/manifest.csv" --test-data "$J/hcc/manifest.csv")
  else
    [ -d "$J/brats/HGG" ] || $BIN/reactkd synth brats --out "$J/brats" --cases "$JUDGE_CASES" --seed "$JUDGE_SEED" \
      $BRATS_GRID --lgg-fraction 0.5
    JUDGED=(--test-data "$J/brats")
  fi
  # Allocations of 1 MB and more straight from the OS: the prepared images (float16, every
  # case under every subset: 13 GB for 330 BraTS cases) otherwise interleave with freed
  # temporaries on the heap, and the process grew past 24 GB.
  MALLOC_MMAP_THRESHOLD_=1048576 $BIN/reactkd ablation --task "$TASK" --config "$CONFIG" --data "$DATA" "${JUDGED[@]}" \
    --trained-runs "$OUT/runs" --seeds 0 1 2 --out "$OUT/judged-$JUDGE_CASES$S" --teachers "${TEACHERS[@]}" \
    ${STEPS:+--steps $STEPS}
fi
