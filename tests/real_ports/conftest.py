"""Real ports: models nobody on this project wrote, compared with zero glue.

Every quirk of the third-party libraries is handled here, never in padiff; QUIRKS.md next to
this file says what each one is. The order of the statements below matters: this conftest is
loaded before any test module of this folder is imported.
"""

import os
import sys
import time
import types

import pytest

# Quirk 1: the torchvision 0.28.0 wheel on PyPI is built against the CUDA build of torch 2.13
# (its _C.so links libc10_cuda.so / libtorch_cuda.so). With torch 2.13.0+cpu the extension does
# not load, and `import torchvision` then dies in torchvision/_meta_registrations.py
# ("RuntimeError: operator torchvision::nms does not exist"). That module only registers fake
# (meta) kernels for torchvision's custom ops (nms, roi_align, ...), which no classification
# model uses: an empty module in its place lets torchvision import, and transformers too (it
# imports torchvision). Must come before anything imports torchvision.
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

# Quirk 2: paddleformers depends on paddlecodec, which installs a top-level `torchcodec` package
# (without `torchcodec` distribution metadata, and with FFmpeg libraries that do not load).
# transformers sees an importable `torchcodec`, then calls importlib.metadata.version("torchcodec")
# in transformers/audio_utils.py, which raises PackageNotFoundError, and every HF model class
# fails to import ("Could not import module 'LlamaModel'"). A None entry in sys.modules makes
# importlib.util.find_spec report the package absent, so transformers never touches it.
# (paddleformers sets the same entry when it is imported, but HF must be imported first: quirk 3.)
sys.modules["torchcodec"] = None

import paddle  # noqa: E402
import torch  # noqa: E402

# Quirk 3: HF classes must be imported before paddleformers. paddleformers/__init__.py imports
# transformers with sys.modules["torch"] = None when torch is not imported yet, so transformers
# caches is_torch_available() == False and every HF model class then raises "LlamaModel requires
# the PyTorch library". torch and the HF model classes are imported here, before paddleformers.
import transformers  # noqa: E402
from transformers import Gemma3TextModel, LlamaForCausalLM, LlamaModel, Phi3Model  # noqa: E402,F401

try:  # Qwen2 is optional in the brief: its test is skipped if this import fails
    from transformers import Qwen2Model  # noqa: E402,F401
except Exception:  # pragma: no cover - depends on the installed transformers
    pass

import torchvision  # noqa: E402,F401

import paddleformers  # noqa: E402,F401

# Quirk 4 (paddle's fused RMSNorm has no CPU kernel) is a config flag: realports_support.PD_CPU.

from realports_support import seed_all  # noqa: E402

_TIMINGS = []


@pytest.fixture(autouse=True)
def _seeded_and_threads():
    """Seed python, numpy and both frameworks; keep the frameworks to 2 threads (CI has 2 cores)."""
    seed_all(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture
def record(request):
    """A dict a test fills with model sizes and timings; printed in the terminal summary."""
    info = {}
    start = time.perf_counter()
    yield info
    info.setdefault("test_s", round(time.perf_counter() - start, 2))
    _TIMINGS.append((request.node.nodeid.split("::")[-1], info))


def pytest_terminal_summary(terminalreporter):
    if not _TIMINGS:
        return
    terminalreporter.section("real ports: model sizes and times")
    for name, info in _TIMINGS:
        parts = ", ".join(f"{k}={v}" for k, v in info.items())
        terminalreporter.write_line(f"{name}: {parts}")
