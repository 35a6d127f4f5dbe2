#!/usr/bin/env bash
# The test command of the README: set up, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check src tests scripts
python -m pytest -q "$@"
