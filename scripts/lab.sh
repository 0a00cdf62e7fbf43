#!/usr/bin/env bash
# The main job: set up (first time only) and open JupyterLab on the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jupyter lab notebooks/ "$@"
