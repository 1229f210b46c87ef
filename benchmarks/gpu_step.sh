#!/usr/bin/env bash
# MoCo-v2 vs HCL-MoCo-v2 training step on one GPU: ResNet-50, 224 px, batch 64,
# queues 65536, float32 (bench_step.py --gpu). Prints the step table (images/s of
# each model), the breakdown of the HCL step and the HCL/MoCo step-time ratio, then
# repeats the two summary lines at the end.
#
# NOT yet run on a GPU: it was written on a CPU-only machine, where only
# `bench_step.py --quick` was exercised. Expected to take 1-3 minutes; it is killed
# after 290 s so that it always finishes within 5 minutes.
#
# Usage: benchmarks/gpu_step.sh [extra bench_step.py arguments, e.g. --batch-size 32]
#        PYTHON=/path/to/python benchmarks/gpu_step.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "CUDA is not available")'
"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
timeout 290 "$PYTHON" benchmarks/bench_step.py --gpu "$@" | tee "$log"

echo
echo "Summary:"
grep -E '^\| (MoCo-v2|HCL-MoCo-v2) \|' "$log" | awk -F'|' '{gsub(/ /, "", $2); gsub(/ /, "", $5); printf "%s: %s images/s\n", $2, $5}'
grep -E '^HCL/MoCo step time' "$log"
