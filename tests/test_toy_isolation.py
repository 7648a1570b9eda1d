"""The unit tests on the toy framework (tests/unit) run on their own, fast, and without torch
or paddle: proof that padiff's core (recorder, pairing, comparison, weight planning, auto_diff)
needs no framework but the one its adapter wraps."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pytest in a fresh interpreter, with tests/conftest.py (which imports both frameworks) out of
# reach; then the frameworks the whole run imported.
_SCRIPT = """
import sys, pytest
code = pytest.main(["-q", "-p", "no:cacheprovider", "--confcutdir", "tests/unit", "tests/unit"])
print("FRAMEWORKS:", sorted(m for m in ("torch", "paddle") if m in sys.modules))
sys.exit(int(code))
"""


def test_the_toy_unit_tests_pass_in_under_ten_seconds_without_torch_or_paddle():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "FRAMEWORKS: []" in out.splitlines(), out
    assert " passed" in out and "failed" not in out and "skipped" not in out, out
    assert took < 10, f"the toy unit tests took {took:.1f} s"
