#!/usr/bin/env bash
# The test command: installs into ./.venv if needed, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest -q "$@"
