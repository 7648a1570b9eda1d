"""The unit tests on the toy framework (tests/unit) run on their own, fast, and without torch
or paddle: proof that padiff's core (recorder, pairing, comparison, weight planning, auto_diff)
needs no framework but the one its adapter wraps."""

import os
import resource
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


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_the_toy_unit_tests_pass_in_under_ten_seconds_without_torch_or_paddle():
    # CPU time, not wall time: other work on a shared machine stretches the wall clock, not this.
    cpu, started = _cpu_of_children(), time.monotonic()
    done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    cpu, wall = _cpu_of_children() - cpu, time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "FRAMEWORKS: []" in out.splitlines(), out
    assert " passed" in out and "failed" not in out and "skipped" not in out, out
    assert cpu < 10, f"the toy unit tests took {cpu:.1f} s of CPU ({wall:.1f} s wall), interpreter start included"
