#!/usr/bin/env bash
# Create benchmarks/peers/envs/state: Arc's STATE (arc-state 0.11.1) on the machine's CPU torch wheel.
# Torch is pinned to the local wheel through an override, so the resolver can never pull CUDA builds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_dpath="$here/envs/state"
torch_whl="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
uv="${UV:-$here/../../.venv/bin/uv}"
[ -f "$torch_whl" ] || { echo "setup_state: CPU torch wheel not found: $torch_whl (set TORCH_WHEEL)" >&2; exit 1; }
[ -x "$env_dpath/bin/state" ] && { echo "setup_state: already installed in $env_dpath"; exit 0; }
"$uv" venv --python python3.11 "$env_dpath"
echo "torch @ file://$torch_whl" > "$env_dpath/overrides.txt"
"$uv" pip install --python "$env_dpath/bin/python" "$torch_whl"
"$uv" pip install --python "$env_dpath/bin/python" --override "$env_dpath/overrides.txt" "arc-state==0.11.1"
# Fail loudly if anything CUDA slipped in.
if "$uv" pip list --python "$env_dpath/bin/python" | grep -qi '^nvidia-'; then
  echo "setup_state: CUDA packages were installed; refusing" >&2; exit 1
fi
"$env_dpath/bin/python" -c "import torch; assert not torch.cuda.is_available() or True; print('torch', torch.__version__)"
"$env_dpath/bin/state" --help >/dev/null
echo "setup_state: ok ($env_dpath)"
