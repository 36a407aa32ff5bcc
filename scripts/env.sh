#!/usr/bin/env bash
# Create (or reuse) .venv with the pinned environment. Idempotent: re-runs only when the lock changes.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.lock-sha
want=$(cat requirements.lock pyproject.toml scripts/env.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "biojepac: setting up .venv (first run takes a few minutes)" >&2
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
  .venv/bin/python -m pip install -q uv==0.9.5 2>/dev/null || .venv/bin/python -m pip install -q uv
  # --compile-bytecode: write the .pyc files now, as pip does by default. Without them every process compiles
  # the sources of what it imports (numba's first call alone went from 0.56 s to 0.20 s, and the
  # environment here sets PYTHONDONTWRITEBYTECODE, so they would never be written).
  .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -r requirements.lock
  .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
fi
.venv/bin/python -m compileall -q src > /dev/null
# The evaluation's kernels, compiled ahead of time for the current sources (about 30 s when they changed,
# nothing otherwise; without a C compiler they are compiled just in time instead: eval/kernels.py).
.venv/bin/python -m biojepac.eval.kernels_build
