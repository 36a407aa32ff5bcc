#!/usr/bin/env bash
# Create benchmarks/peers/envs/gears: GEARS (cell-gears 0.1.2) with scipy<1.15 and torch_geometric, on the CPU torch wheel.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dpath="$here/envs/gears"
torch_whl="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
uv="${UV:-$here/../../.venv/bin/uv}"
[ -f "$torch_whl" ] || { echo "setup_gears: CPU torch wheel not found: $torch_whl (set TORCH_WHEEL)" >&2; exit 1; }
[ -f "$env_dpath/.ok" ] && { echo "setup_gears: already installed in $env_dpath"; exit 0; }
"$uv" venv --python python3.11 "$env_dpath"
echo "torch @ file://$torch_whl" > "$env_dpath/overrides.txt"
"$uv" pip install --python "$env_dpath/bin/python" "$torch_whl"
"$uv" pip install --python "$env_dpath/bin/python" --override "$env_dpath/overrides.txt" \
  "cell-gears==0.1.2" "scipy==1.14.1" "torch-geometric==2.6.1" "numpy==1.26.4" "pandas==2.2.3" "anndata==0.10.9" "scanpy==1.10.4"
if "$uv" pip list --python "$env_dpath/bin/python" | grep -qi '^nvidia-'; then
  echo "setup_gears: CUDA packages were installed; refusing" >&2; exit 1
fi
"$env_dpath/bin/python" -c "import gears, torch_geometric, scipy; print('gears ok, scipy', scipy.__version__)"
touch "$env_dpath/.ok"
echo "setup_gears: ok ($env_dpath)"
