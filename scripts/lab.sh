#!/usr/bin/env bash
# The main job: set up (first time only) and open JupyterLab on the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One intra-op thread: the models are tiny, and on a busy 2-core machine torch's default of one
# thread per core made a 5-shot fine-tuning run 8× slower (threads spin-waiting for each other).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/jupyter lab notebooks/ "$@"
