#!/usr/bin/env bash
# The main job: set up (first time only) and open JupyterLab on the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# No thread setting here: tlgates chooses torch's thread count where it trains (tlgates.cpu),
# so the notebooks give the same numbers whichever way JupyterLab is started.
# JupyterLab refuses to run as root without --allow-root (containers, cloud machines, CI).
root=()
if [ "$(id -u)" -eq 0 ]; then root=(--allow-root); fi
exec .venv/bin/jupyter lab notebooks/ ${root[@]+"${root[@]}"} "$@"
