#!/usr/bin/env bash
# Set up the environment and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
.venv/bin/ruff check src tests benchmarks scripts
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
