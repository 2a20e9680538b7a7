#!/usr/bin/env bash
# The fast tier for the edit-test loop (under 3 minutes): lint, the layer contract, every test
# that needs neither Ray nor Docker, and one end-to-end batch (`fleet demo` on real Ray).
# Assumes `pip install -e '.[test]'` was run once; CI runs the whole suite (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check .
lint-imports
python3 -m pytest -q -m "fast or not (ray or docker)" "$@"
