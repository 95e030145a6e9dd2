#!/usr/bin/env bash
# Install (if needed) and run the main job on the built-in sample: train MLFF-GAN briefly, predict the
# held-out date, compare with the baselines. Outputs go to demo-output/ (replaced if present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/stfusion demo --out demo-output --overwrite "$@"
