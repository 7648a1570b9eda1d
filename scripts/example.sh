#!/usr/bin/env bash
# Set up a virtual environment with both frameworks and run the bundled example:
# two model pairs aligned, then each with a deliberate porting bug.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all]"
exec .venv/bin/python examples/run_example.py
