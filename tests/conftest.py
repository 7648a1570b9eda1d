import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "examples")):
    if p not in sys.path:
        sys.path.insert(0, p)

# CI has both frameworks: never let a missing one turn into silently skipped tests.
import paddle  # noqa: E402,F401
import torch  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _isolated_log_dir(tmp_path, monkeypatch):
    """Every test writes padiff's logs into its own temporary folder."""
    monkeypatch.setenv("PADIFF_LOG_DIR", str(tmp_path / "padiff_log"))
    monkeypatch.delenv("PADIFF_API_CHECK", raising=False)
    monkeypatch.delenv("PADIFF_PATH_LOG", raising=False)
    monkeypatch.delenv("PADIFF_SKIP_WRAP_LAYER", raising=False)
    monkeypatch.delenv("PADIFF_SIKP_WRAP_LAYER", raising=False)
    yield
