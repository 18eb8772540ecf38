#!/usr/bin/env bash
# One command that tests and benchmarks every family on this machine's GPU: environment, the
# device tests, the cards' tables beside the FLUX.2 VAE and its small decoder, the compiled path
# (benchmarks/gpu_check.py; results in benchmarks/results/gpu-check-<machine>.md and .json).
# Exits non-zero on any failed check.
#
#   bash benchmarks/gpu_check.sh               # CUDA (not yet run on a GPU)
#   bash benchmarks/gpu_check.sh --device cpu  # the short CPU version (CI): 53 s on 2 quiet Xeon cores
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || true
fi
if command -v uv >/dev/null 2>&1; then
    uv=(uv)
else
    uv=(python3 -m uv)  # as .ci/run installs it
fi
exec "${uv[@]}" run --locked python -m benchmarks.gpu_check "$@"
