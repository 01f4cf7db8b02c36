#!/usr/bin/env bash
# Create .venv with arpo and its test dependencies. Idempotent; safe to run again.
# torch/torchvision are pinned first because on machines without the hub (CI, these dev boxes) the
# pinned pair installs from the local package index; elsewhere pip fetches the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "arpo environment ready: .venv"
