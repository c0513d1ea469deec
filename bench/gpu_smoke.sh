#!/usr/bin/env bash
# One command for a GPU machine: GPT-2 124M throughput and MFU, and a kill-and-resume under
# `gpt2sup run` whose losses must equal an uninterrupted run bit for bit (--deterministic).
# Extra arguments go to bench/gpu_smoke.py (e.g. --nproc 8, --compile, --peak-tflops 989).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/gpu_smoke.py "$@"
