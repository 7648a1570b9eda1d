#!/usr/bin/env bash
# Set up a virtual environment with both frameworks and run the whole test suite.
# Works on a fresh machine that has only Python 3.11 and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all,html,test,realports]"
# The HTML report test drives headless Chromium. Install it where we may (CI runs as root on Debian).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; the HTML screenshot test will be skipped"
fi
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
# pytest's "no tests collected" (5) is a failure here: CI must run tests.
exit $status
