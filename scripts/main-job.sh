#!/usr/bin/env bash
# The main job: a base model for Epithelial + Spindle-shaped on CoNSeP, then one CiNuSeg step
# that adds "Other" without the base step's data, then Dice on a validation split held out by
# source image. Uses the small CPU preset; pass e.g. PRESET=paper on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# the environment .ci/setup makes, where there is one
if [ -x .venv/bin/cinuseg ]; then PATH="$PWD/.venv/bin:$PATH"; fi
DATA="${CINUSEG_DATA:-../shared/data}"
OUT="${OUT:-runs/main-job}"
PRESET="${PRESET:-cpu}"
mkdir -p "$OUT"
stamp=$(date +%Y%m%d-%H%M%S)
base="$OUT/base-$stamp.cinuseg.pt"
step="$OUT/step1-$stamp.cinuseg.pt"
cinuseg train-base --dataset consep --data "$DATA/consep" --classes Epithelial,Spindle-shaped \
    --preset "$PRESET" --out "$base" "$@"
cinuseg evaluate --model "$base" --dataset consep --data "$DATA/consep" --split val
cinuseg step --prior "$base" --dataset consep --data "$DATA/consep" --new-class Other \
    --method cinuseg --preset "$PRESET" --out "$step" "$@"
cinuseg evaluate --model "$step" --dataset consep --data "$DATA/consep" --split val --json | tee "$OUT/step1-$stamp.json"
cinuseg info "$step"
