#!/usr/bin/env bash
# The real-shape benchmark as a GPU machine should run it, in one go: SD 1.5's architecture at 512 px
# in float16 with the preset's 30 denoising steps, both placements (peak memory of each), and what
# each render speed-up buys. Prints the JSON and, when $OUT is set (the device machine's output
# folder), keeps it and the progress log there.
#   scripts/gpu-benchmark.sh            # about 5-10 minutes on one modern GPU, compile included
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
out="${OUT:-.}"
"$python" -m arpo.eval.real_shape_benchmark --device cuda --resolution 512 --dtype float16 --denoise-steps 30 \
  --placement both --speedups attention channels-last compile --json \
  > "$out/real-shape-gpu.json" 2> "$out/real-shape-gpu.log"
cat "$out/real-shape-gpu.json"
