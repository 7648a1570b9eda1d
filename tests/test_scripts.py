"""The bundled example and the seed 001/002 tutorial scripts run as written."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(path, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, PADIFF_LOG_DIR=str(tmp_path / "logs"))
    env.pop("PADIFF_API_CHECK", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc


@pytest.mark.parametrize("script,runs", [("examples/seeds/seed001_tutorial.py", 4),
                                         ("examples/seeds/seed002_tutorial.py", 4)])
def test_seed_tutorial_scripts_run_as_written(script, runs, tmp_path):
    proc = run_script(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[AutoDiff] SUCCESS !!!") == runs
    assert "FAILED" not in proc.stdout


def test_bundled_example_shows_both_verdicts(tmp_path):
    proc = run_script("examples/run_example.py", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.count("==> padiff says aligned (as expected)") == 2
    assert out.count("==> padiff says not aligned (as expected)") == 2
    assert "[AutoDiff]     Route: PaddleConvNet.layers.1.bn1" in out
    assert "[AutoDiff]     Route: PaddleEncoder.blocks.1.mlp > paddle.nn.functional.gelu" in out
    assert out.count("<---  *** HERE ***") >= 4
