#!/usr/bin/env bash
# The exact recipe of the shipped demo models: synthetic cohorts, teachers, distilled
# students, ONNX export with model cards. `make demo-models` runs it (CPU, 2 cores: about
# an hour; the segmenter about 30 minutes more and 20 for its cohorts and report; the
# lesion-grid HCC models, behind it, about 50 minutes more, 15 of them segmenting their
# cohort; the BraTS sub-region segmenter 17 minutes and 10 for its report). Everything it makes is trained on SYNTHETIC data and its card says so.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/demo}
OUT=${OUT:-app/demo_models}
SEED=${SEED:-7}
HCC_CASES=${HCC_CASES:-200}
LESION_CASES=${LESION_CASES:-500}  # the CT-only lesion grader needs more cases than 200 (docs/segmenter.md)
TORSO_CASES=${TORSO_CASES:-150}
BRATS_CASES=${BRATS_CASES:-360}  # 54 val cases (27 LGG) to choose the decision on
BRATS_GRID=${BRATS_GRID:-"--shape 96 96 64 --spacing 2.5"}
BRATS_LGG=${BRATS_LGG:-0.5}  # balanced: enough LGG in val to choose the decision on (issue #37)
RUNS="$WORK/runs"
mkdir -p "$WORK" "$OUT"
teacher() {  # teacher CONFIG DATA NAME: train it unless its checkpoint is there (a rerun keeps it)
  [ -f "$RUNS/$3-s$SEED/best.pt" ] || $BIN/reactkd train teacher --config "$1" --data "$2" --out "$RUNS" --seed "$SEED"
}
card() {  # training-data note for a model card; $2: more JSON fields (`, "key": value`)
  printf '{"synthetic": true, "description": "%s"%s}' "$1" "${2:-}"
}

hcc() {  # two teachers, then the distilled CT student; `hcc lesion`: all three on the lesion grid
local grid=${1:-whole} suffix="" run="" cases=$HCC_CASES cohort="$WORK/hcc"
[ "$grid" = whole ] || { suffix="_$grid"; run="$grid-"; cases=$LESION_CASES; cohort="$WORK/hcc-$grid"; }
[ -f "$cohort/manifest.csv" ] || $BIN/reactkd synth hcc --out "$cohort" --cases "$cases" --seed "$SEED"
HCC="$cohort/manifest.csv"
teacher "configs/demo/hcc${suffix}_teacher_sf.yaml" "$HCC" "hcc-${run}structure-function"
teacher "configs/demo/hcc${suffix}_teacher_dose.yaml" "$HCC" "hcc-${run}dose-aware"
local graded="$HCC" behind="" masks="" version=0.1.0
if [ "$grid" = lesion ]; then  # the grader meets the segmenter's masks, so it learns on them (issue #35)
  [ -f "$cohort-segmented/manifest.csv" ] || $BIN/reactkd segment "$OUT/hcc_segmenter.onnx" --data "$HCC" \
    --out "$cohort-segmented"
  graded="$cohort-segmented/manifest.csv" version=0.2.0  # 0.1.0 learned on the true masks
  behind=" Crops and regions placed by the masks of the shipped hcc_segmenter (reactkd segment), the true ones where it found no lesion."
  masks=", \"masks_from\": {\"name\": \"hcc_segmenter\", \"onnx_sha256\": \"$(sha256sum "$OUT/hcc_segmenter.onnx" | cut -c1-16)\"}"
fi
$BIN/reactkd train student --config "configs/demo/hcc${suffix}_student.yaml" --data "$graded" --out "$RUNS" --seed "$SEED" \
  --teachers "$RUNS/hcc-${run}structure-function-s$SEED/best.pt" "$RUNS/hcc-${run}dose-aware-s$SEED/best.pt"
$BIN/reactkd export "$RUNS/hcc-${run}student-s$SEED/best.pt" --out "$OUT/hcc${suffix}_student.onnx" --data "$graded" --calibrate --version "$version" \
  --training-data "$(card "Synthetic HCC benchmark of this project (docs/benchmark.md): reactkd synth hcc --cases $cases --seed $SEED; trained on its train split, selected on val, metrics on test.$behind Not real patients." "$masks")"
}
hcc_lesion() { hcc lesion; }  # the default HCC grader, behind the segmenter (localize, then grade): after hcc_segmenter

hcc_segmenter() {  # liver and lesion, both stages side by side (one core each), then judged on fresh cohorts
[ -f "$WORK/hcc/manifest.csv" ] || $BIN/reactkd synth hcc --out "$WORK/hcc" --cases "$HCC_CASES" --seed "$SEED"
[ -f "$WORK/torso/manifest.csv" ] || $BIN/reactkd synth torso --out "$WORK/torso" --cases "$TORSO_CASES" --seed 0
local config data="$WORK/torso/manifest.csv $WORK/hcc/manifest.csv"
for config in configs/demo/hcc_segmenter.yaml configs/demo/hcc_segmenter_fine.yaml; do
  OMP_NUM_THREADS=1 $BIN/reactkd train segmenter --config "$config" \
    --data $data --out "$RUNS" --cache "$WORK/segmenter-cache" --seed "$SEED" &
done
wait
local coarse="$RUNS/hcc-segmenter-coarse-s$SEED/best.pt" fine="$RUNS/hcc-segmenter-fine-s$SEED/best.pt"
local note="Synthetic only, not real patients (docs/segmenter.md): reactkd synth torso --cases $TORSO_CASES --seed 0 and reactkd synth hcc --cases $HCC_CASES --seed $SEED; trained on their train splits."
$BIN/reactkd export "$coarse" --fine "$fine" --out "$OUT/hcc_segmenter.onnx" --training-data "$(card "$note")"
# The lesion threshold, chosen on the training cohorts' validation cases (the card keeps it).
$BIN/reactkd tune-segmenter "$OUT/hcc_segmenter.onnx" --data $data --out reports/segmenter/lesion-threshold.json
# Judged on cohorts no training or selection used (seeds 31-34), every case of each
# (reports/segmenter/README.md), then on real CT (TotalSegmentator's reference scans).
[ -f "$WORK/seg-torso/manifest.csv" ] || $BIN/reactkd synth torso --out "$WORK/seg-torso" --cases 40 --seed 31
[ -f "$WORK/seg-hcc/manifest.csv" ] || $BIN/reactkd synth hcc --out "$WORK/seg-hcc" --cases 40 --seed 32
[ -f "$WORK/seg-ext/manifest.csv" ] || $BIN/reactkd synth hcc --out "$WORK/seg-ext" --cases 30 --seed 33 --external
[ -f "$WORK/seg-noliver/manifest.csv" ] || $BIN/reactkd synth torso --out "$WORK/seg-noliver" --cases 24 --seed 34 \
  --fields chest pelvis head
$BIN/reactkd evaluate "$OUT/hcc_segmenter.onnx" --split all --out reports/segmenter \
  --cohort "torso=$WORK/seg-torso/manifest.csv" --cohort "benchmark=$WORK/seg-hcc/manifest.csv" \
  --cohort "external=$WORK/seg-ext/manifest.csv" --cohort "no-liver=$WORK/seg-noliver/manifest.csv"
$BIN/python -m training.real_ct --model "$OUT/hcc_segmenter.onnx" --out reports/segmenter/real-ct
$BIN/reactkd export "$coarse" --fine "$fine" --out "$OUT/hcc_segmenter.onnx" --training-data "$(card "$note")" \
  --report reports/segmenter/report.json --lesion-threshold reports/segmenter/lesion-threshold.json
}

brats() {  # hybrid CNN+ViT teacher, then the EfficientNet-style student
[ -d "$WORK/brats/HGG" ] || $BIN/reactkd synth brats --out "$WORK/brats" --cases "$BRATS_CASES" --seed "$SEED" \
  $BRATS_GRID --lgg-fraction "$BRATS_LGG"
BRATS="$WORK/brats"
teacher configs/demo/brats_teacher_hybrid.yaml "$BRATS" brats-hybrid
$BIN/reactkd train student --config configs/demo/brats_student.yaml --data "$BRATS" --out "$RUNS" --seed "$SEED" \
  --teachers "$RUNS/brats-hybrid-s$SEED/best.pt"
$BIN/reactkd export "$RUNS/brats-student-s$SEED/best.pt" --out "$OUT/brats_student.onnx" --data "$BRATS" --calibrate \
  --training-data "$(card "Synthetic BraTS-like benchmark of this project in the BraTS 2019 layout (docs/benchmark.md): reactkd synth brats --cases $BRATS_CASES --seed $SEED $BRATS_GRID --lgg-fraction $BRATS_LGG (balanced); trained on its train split with class-weighted cross-entropy, selected on val, calibrated and its decision chosen on val for balanced accuracy, metrics on test. Not real patients.")"
}

brats_segmenter() {  # the glioma's sub-regions (SegResNet, region-based), judged on a fresh cohort
[ -d "$WORK/brats/HGG" ] || $BIN/reactkd synth brats --out "$WORK/brats" --cases "$BRATS_CASES" --seed "$SEED" \
  $BRATS_GRID --lgg-fraction "$BRATS_LGG"
$BIN/reactkd train segmenter --config configs/demo/brats_segmenter.yaml --data "$WORK/brats" --out "$RUNS" \
  --cache "$WORK/brats-segmenter-cache" --seed "$SEED"
local best="$RUNS/brats-segmenter-coarse-s$SEED/best.pt"
local note="Synthetic BraTS-like benchmark of this project (docs/benchmark.md): reactkd synth brats --cases $BRATS_CASES --seed $SEED $BRATS_GRID --lgg-fraction $BRATS_LGG; trained on its train split with sequences hidden at random, selected on val. Not real patients."
$BIN/reactkd export "$best" --out "$OUT/brats_segmenter.onnx" --training-data "$(card "$note")"
# Judged on a cohort no training or selection used (seed 107, the students' judging cohort):
# every case, with all four sequences and each alone (reports/brats-segmenter/).
[ -d "$WORK/brats-fresh/HGG" ] || $BIN/reactkd synth brats --out "$WORK/brats-fresh" --cases 330 --seed 107 \
  $BRATS_GRID --lgg-fraction 0.5
$BIN/reactkd evaluate "$OUT/brats_segmenter.onnx" --data "$WORK/brats-fresh" --out reports/brats-segmenter
$BIN/reactkd export "$best" --out "$OUT/brats_segmenter.onnx" --training-data "$(card "$note")" \
  --report reports/brats-segmenter/report.json
}

# TASKS="hcc", "hcc_lesion", "hcc_segmenter", "brats" or "brats_segmenter" builds one (shells
# can build them at once).
for task in ${TASKS:-hcc hcc_segmenter hcc_lesion brats brats_segmenter}; do "$task"; done
ls -la "$OUT"
