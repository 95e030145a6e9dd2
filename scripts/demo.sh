#!/usr/bin/env bash
# Install (if needed) and run the main job on the built-in sample: the leave-out benchmark of the CIA
# sample (MLFF-GAN trained on the other bundled datasets only, against persistence, coarse-delta, STARFM
# and FSDAF), ending with the winner. Outputs go to demo-output/ (replaced if present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/stfusion demo --out demo-output --overwrite "$@"
