"""The unit tests on the toy framework (padiff/frameworks/toyfw): padiff's core on a framework
over numpy, with neither torch nor paddle imported. tests/test_toy_isolation.py runs this
folder on its own (``--confcutdir tests/unit``, so tests/conftest.py, which imports both
frameworks, is not loaded) and checks that."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)


@pytest.fixture(autouse=True)
def _isolated_log_dir(tmp_path, monkeypatch):
    """Every test writes padiff's logs into its own temporary folder (as tests/conftest.py)."""
    monkeypatch.setenv("PADIFF_LOG_DIR", str(tmp_path / "padiff_log"))
    for name in ("PADIFF_API_CHECK", "PADIFF_PATH_LOG", "PADIFF_SKIP_WRAP_LAYER", "PADIFF_SIKP_WRAP_LAYER"):
        monkeypatch.delenv(name, raising=False)
    yield
