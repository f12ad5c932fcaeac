#!/usr/bin/env bash
# Reproduce the bundled demo models (src/breastscreen/zoo/demo-*) and benchmarks/results/insilico.json.
# Runs on CPU in well under an hour; see scripts/train_demo_models.py for the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
exec .venv/bin/python scripts/train_demo_models.py "$@"
