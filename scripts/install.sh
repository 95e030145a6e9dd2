#!/usr/bin/env bash
# Create .venv (if missing) and install stfusion with its dev tools into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch is pinned (==2.13.0, CPU build) in pyproject.toml; pip's quiet mode still shows errors.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import stfusion, torch; print(f'stfusion {stfusion.__version__}, torch {torch.__version__}')"
