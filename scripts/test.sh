#!/usr/bin/env bash
# The whole test suite: unit tests, every notebook run by nbval, and the real-browser test.
#
#   bash scripts/test.sh                      # everything (first run: sets up .venv, chromium)
#   bash scripts/test.sh -k data              # extra arguments go to pytest
#   bash scripts/test.sh tests/test_train.py  # a path given: only that, not tests/ + notebooks/
#
# The exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# One intra-op thread for what the tests compute themselves: the models are tiny, and on a busy
# 2-core machine torch's default of one thread per core made them several times slower. Training
# (run_method) uses tlgates' own choice whatever this says (tlgates.cpu).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The browser test needs Debian's chromium (never `playwright install`: it downloads a browser).
CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian's chromium for the browser tests..."
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q chromium
    else
        echo "!!! $CHROMIUM is missing, and installing it needs root and apt-get."
        echo "!!! The browser tests will be SKIPPED. To run them:"
        echo "!!!     sudo apt-get update && sudo apt-get install -y chromium"
    fi
fi

# Test paths given on the command line replace the default ones.
paths=(tests)
if [ -d notebooks ]; then paths+=(notebooks); fi
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        */* | *.py | *.ipynb | *::*)
            if [ -e "${arg%%::*}" ]; then paths=(); break; fi ;;
    esac
done

# --nbval-lax: run every notebook, check only the cells marked NBVAL_CHECK_OUTPUT (and fail on
# errors, so assertion cells count). A notebook cell takes up to ~2 minutes with the defaults.
# --nbval-current-env: the notebooks run on this venv's Python, whatever kernel they name.
status=0
.venv/bin/python -m pytest "${paths[@]}" \
    --nbval-lax --nbval-current-env --nbval-cell-timeout=300 \
    -rs "$@" || status=$?

if [ ! -x "$CHROMIUM" ]; then
    echo "!!! The browser tests were SKIPPED: $CHROMIUM is missing."
fi
exit "$status"
