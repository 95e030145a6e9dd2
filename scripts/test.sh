#!/usr/bin/env bash
# Install (if needed) and run every check: ruff lint + format, mypy, the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests benchmarks scripts run.py
.venv/bin/ruff format --check src tests benchmarks scripts run.py
.venv/bin/mypy
# the tests are spread over up to 4 processes (one per core; most tests use one thread); a later
# -n in the arguments wins, e.g. `bash scripts/test.sh -n 0` runs them in this process
workers=$(nproc 2>/dev/null || echo 1)
.venv/bin/pytest -n "$((workers < 4 ? workers : 4))" --dist worksteal "$@"
