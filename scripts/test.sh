#!/usr/bin/env bash
# Install (if needed) and run every check: ruff lint + format, mypy, the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests benchmarks scripts run.py
.venv/bin/ruff format --check src tests benchmarks scripts run.py
.venv/bin/mypy
.venv/bin/pytest "$@"
