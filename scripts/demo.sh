#!/usr/bin/env bash
# Set up the environment, then run the whole pipeline on a generated synthetic screen:
# data -> models (baselines, STATE-style transition, small BioJEPAC) -> predictions -> evaluation report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
exec .venv/bin/biojepac demo "$@"
