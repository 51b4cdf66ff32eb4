#!/usr/bin/env bash
# Creates ./.venv (if absent) and installs s3l_plugin with its test extras,
# pinned to the versions in constraints.txt. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import s3l_plugin, pytest, speechbrain, flashlight.lib.text" \
        >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
fi
