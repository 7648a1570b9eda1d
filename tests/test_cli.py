"""The ``padiff`` command: subcommands, --help, and exit statuses that gate a CI job."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import padiff
from padiff import ReprodLogger
from padiff.cli import main
from padiff.dump import dump
from support import make_net, net_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """A torch dump, a paddle dump with the same weights, and one of a paddle model with a bug."""
    folder = tmp_path_factory.mktemp("dumps")
    t, p, bad = make_net("torch"), make_net("paddle"), make_net("paddle", "activation")
    for m in (t, p, bad):
        m.eval()
    padiff.assign_weight(p, t)
    padiff.assign_weight(bad, t)
    dump(t, net_input("torch"), folder / "torch")
    dump(p, net_input("paddle"), folder / "paddle")
    dump(bad, net_input("paddle"), folder / "paddle_bug")
    return folder


def test_compare_exit_status_gates_ci(dumps, capsys):
    capsys.readouterr()
    assert main(["compare", str(dumps / "paddle"), str(dumps / "torch")]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("[AutoDiff] SUCCESS !!!")
    assert main(["compare", str(dumps / "paddle_bug"), str(dumps / "torch"), "--diff-phase", "forward"]) == 1
    out = capsys.readouterr().out
    assert "  diff_phase: `forward`" in out
    assert "[AutoDiff]     Type of layer is: Sigmoid vs ReLU\n[AutoDiff]     Route: PaddleNet.act  (paddle)\n" \
           "[AutoDiff]            TorchNet.act   (torch)\n" in out
    assert out.rstrip().endswith("[AutoDiff] FAILED !!!")
    assert main(["compare", str(dumps / "paddle_bug"), str(dumps / "torch"), "--quiet"]) == 1
    assert capsys.readouterr() == ("", "")


def test_compare_unusable_input_is_status_2_with_the_message(dumps, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), str(dumps / "torch")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"padiff compare: error: There is no padiff dump at `{tmp_path / 'missing'}`")
    assert "Traceback" not in err
    # an unfinished dump left by a killed process
    shutil.copytree(dumps / "torch", tmp_path / "run.partial-999999999")
    manifest = tmp_path / "run.partial-999999999" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete":true', '"complete":false'))
    assert main(["compare", str(tmp_path / "run"), str(dumps / "torch")]) == 2
    err = capsys.readouterr().err
    assert f"padiff compare: error: The padiff dump `{tmp_path / 'run'}` was interrupted" in err
    assert "Re-run padiff.dump(model, inputs, path) to make the dump again." in err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["compare", str(tmp_path / "notes.txt"), str(dumps / "torch")]) == 2
    assert "is a file: padiff compare takes two dump folders (made by padiff.dump), or two array files" in \
        capsys.readouterr().err
    assert main(["compare", str(dumps / "torch")]) == 2  # argparse: a usage error
    assert "usage: padiff compare" in capsys.readouterr().err


def test_compare_writes_the_html_report(dumps, tmp_path, capsys):
    path = tmp_path / "report.html"
    assert main(["compare", str(dumps / "paddle_bug"), str(dumps / "torch"), "--html", str(path)]) == 1
    assert f"[AutoDiff] HTML report: `{path}`" in capsys.readouterr().out
    text = path.read_text()
    assert text.lstrip().lower().startswith("<!doctype html") and "PaddleNet.act" in text


def test_compare_of_two_array_files_delegates(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.ones(3, "float32"))
    np.save(tmp_path / "b.npy", np.full(3, 1.1, "float32"))
    assert main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "a.npy")]) == 0
    assert "[padiff] SUCCESS !!!" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--atol", "1e-3"]) == 1
    assert "Greatest absolute difference: 0.1 at index (0,)" in capsys.readouterr().out


def _reprod(path, **arrays):
    logger = ReprodLogger()
    for k, v in arrays.items():
        logger.add(k, np.asarray(v, dtype="float32"))
    logger.save(str(path))


def test_report_of_reprod_files(tmp_path, capsys):
    _reprod(tmp_path / "forward_torch.npy", logits=[1.0, 2.0])
    _reprod(tmp_path / "forward_paddle.npy", logits=[1.0, 2.0])
    _reprod(tmp_path / "forward_off.npy", logits=[1.0, 2.5])
    log = tmp_path / "log" / "forward_diff.log"
    assert main(["report", str(tmp_path / "forward_torch.npy"), str(tmp_path / "forward_paddle.npy"),
                 "--log", str(log)]) == 0
    assert "diff check passed" in capsys.readouterr().out
    assert log.read_text().rstrip().endswith("diff check passed")
    assert main(["report", str(tmp_path / "forward_torch.npy"), str(tmp_path / "forward_off.npy"),
                 "--method", "max", "--threshold", "0.1", "--no-log"]) == 1
    out = capsys.readouterr().out
    assert "max diff: check passed: False, value: 0.5" in out and "diff check failed" in out
    assert main(["report", str(tmp_path / "forward_torch.npy"), str(tmp_path / "forward_off.npy"),
                 "--threshold", "0.3", "--no-log"]) == 0  # the mean difference is 0.25
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nothing.npy"), str(tmp_path / "forward_off.npy")]) == 2
    assert "padiff report: error: no reprod_log file at" in capsys.readouterr().err


def test_checkpoints_folder(tmp_path, capsys):
    for name in ("forward", "metric", "loss", "bp_align", "train_align"):
        _reprod(tmp_path / f"{name}_paddle.npy", v=[0.5])
        _reprod(tmp_path / f"{name}_torch.npy", v=[0.5])
    assert main(["checkpoints", str(tmp_path), "--out", str(tmp_path / "logs")]) == 0
    assert "5 passed" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "logs")) == sorted(
        f"{n}_diff.log" for n in ("forward", "metric", "loss", "bp_align", "train_align"))
    os.remove(tmp_path / "loss_torch.npy")
    assert main(["checkpoints", str(tmp_path)]) == 1
    assert "4 passed, 1 missing" in capsys.readouterr().out
    assert main(["checkpoints", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compare", "report", "checkpoints", "convert"])
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: padiff {command}")


def test_the_command_itself(capsys):
    assert main([]) == 2
    assert "usage: padiff COMMAND" in capsys.readouterr().err
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("compare", "report", "checkpoints", "convert"):
        assert f"\n  {command} " in out
    assert main(["compre", "a", "b"]) == 2
    assert "padiff: error: unknown command 'compre'. Did you mean `padiff compare`?" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"padiff {padiff.__version__}"
    assert main(["convert", "missing.pth", "out.pdparams"]) == 2  # unusable input
    assert capsys.readouterr().err.startswith("padiff convert: ")


def test_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-m", "padiff", "compare", str(tmp_path / "a"), str(tmp_path / "b")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith(f"padiff compare: error: There is no padiff dump at `{tmp_path / 'a'}`")
