#!/usr/bin/env bash
# GPU checks and timings in one run (issue 5, item 6), for a CUDA machine with PyTorch, Triton and
# CPU onnxruntime and no network: nothing is installed, the checkout is put on sys.path instead.
#   benchmarks/gpu.sh RESULTS_DIR [extra options of python -m benchmarks.gpu_bench]
# CHECKPOINT=path.safetensors selects the native checkpoint (default: the bundled ONNX's weights,
# readable only with the torch that exported it: on another torch, make one here first with
# `python -m clumpdet.export.reconstruct models/clumpdet-native-sim.onnx --out DIR/native` and carry it).
set -euo pipefail
out=${1:?usage: benchmarks/gpu.sh RESULTS_DIR [options]}
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/clumpdet"
for part in engine train export; do ln -s "$repo/$part" "$shim/clumpdet/$part"; done
export PYTHONPATH="$shim:$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"${PYTHON:-python3}" -c 'import torch, torchvision, timm, onnx, onnxscript, safetensors' \
    || { echo "gpu.sh: a needed package is missing (see above)" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
mkdir -p "$out"
args=(--out "$out")
[[ -n "${CHECKPOINT:-}" ]] && args+=(--checkpoint "$CHECKPOINT")
cd "$repo"
"${PYTHON:-python3}" -m benchmarks.gpu_bench "${args[@]}" "$@"
