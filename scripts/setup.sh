#!/usr/bin/env bash
# Create .venv and install tlgates with its notebook and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    # Machines with a local copy of torch cap it in /etc/xdg/pip; take exactly that pair there.
    # Elsewhere pip picks the right build for the platform.
    if [ -f /etc/xdg/pip/constraints.txt ] && [ "$(uname -m)" = x86_64 ]; then
        "${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
    else
        "${PIP[@]}" install -q torch torchvision
    fi
fi
"${PIP[@]}" install -q -e ".[notebooks,test]"
echo "tlgates is set up in $(pwd)/.venv"
