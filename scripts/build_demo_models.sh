#!/usr/bin/env bash
# The exact recipe of the shipped demo models: synthetic cohorts, teachers, distilled
# students, ONNX export with model cards. Run with `make demo-models` (CPU, 2 cores: about
# an hour). Everything it makes is trained on SYNTHETIC data and says so in its card.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/demo}
OUT=${OUT:-app/demo_models}
SEED=${SEED:-7}
HCC_CASES=${HCC_CASES:-240}
BRATS_CASES=${BRATS_CASES:-120}
EPOCHS=${EPOCHS:-25}
mkdir -p "$WORK" "$OUT"

SYNTH_HCC="{\"synthetic\": true, \"description\": \"REACT-KD Serve synthetic HCC benchmark (docs/benchmark.md): reactkd synth hcc --cases $HCC_CASES --seed $SEED; trained on its train split, selected on val\"}"
SYNTH_BRATS="{\"synthetic\": true, \"description\": \"REACT-KD Serve synthetic BraTS benchmark (docs/benchmark.md): reactkd synth brats --cases $BRATS_CASES --seed $SEED --shape 120 120 78; trained on its train split, selected on val\"}"

# --- HCC: two teachers, then the distilled CT student
[ -f "$WORK/hcc/manifest.csv" ] || $BIN/reactkd synth hcc --out "$WORK/hcc" --cases "$HCC_CASES" --seed "$SEED"
$BIN/reactkd train teacher --task hcc --kind structure-function --data "$WORK/hcc/manifest.csv" \
    --out "$WORK/runs" --epochs "$EPOCHS" --seed "$SEED"
$BIN/reactkd train teacher --task hcc --kind dose-aware --data "$WORK/hcc/manifest.csv" \
    --out "$WORK/runs" --epochs "$EPOCHS" --seed "$SEED"
$BIN/reactkd train student --task hcc --data "$WORK/hcc/manifest.csv" --out "$WORK/runs" \
    --epochs "$EPOCHS" --seed "$SEED" \
    --teachers "$WORK/runs/hcc-structure-function-s$SEED/best.pt" "$WORK/runs/hcc-dose-aware-s$SEED/best.pt"
$BIN/reactkd export "$WORK/runs/hcc-student-s$SEED/best.pt" --out "$OUT/hcc_student.onnx" \
    --data "$WORK/hcc/manifest.csv" --training-data "$SYNTH_HCC"

# --- BraTS: hybrid CNN+ViT teacher, then the EfficientNet-style student
[ -d "$WORK/brats/HGG" ] || $BIN/reactkd synth brats --out "$WORK/brats" --cases "$BRATS_CASES" --seed "$SEED" \
    --shape 120 120 78
$BIN/reactkd train teacher --task brats --kind hybrid --data "$WORK/brats" --out "$WORK/runs" \
    --epochs "$EPOCHS" --seed "$SEED"
$BIN/reactkd train student --task brats --data "$WORK/brats" --out "$WORK/runs" --epochs "$EPOCHS" \
    --seed "$SEED" --teachers "$WORK/runs/brats-hybrid-s$SEED/best.pt" --rgd-weight 0
$BIN/reactkd export "$WORK/runs/brats-student-s$SEED/best.pt" --out "$OUT/brats_student.onnx" \
    --data "$WORK/brats" --training-data "$SYNTH_BRATS"
ls -la "$OUT"
