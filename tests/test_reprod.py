"""Tests of padiff.reprod, the drop-in reprod_log workflow of the paper-reproduction guide."""

import logging
import os
import re

import numpy as np
import pytest

from padiff.errors import PadiffError
from padiff.reprod import (
    CHECKPOINTS,
    ReprodDiffHelper,
    ReprodLogger,
    check_checkpoints,
    render_checkpoint_summary,
    render_report,
)

PREFIX = re.compile(r"^\[\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\] padiff\.reprod INFO: ")


def strip_prefix(text):
    """The messages of formatted log lines; every line must carry the guide's prefix."""
    out = []
    for line in text.splitlines():
        m = PREFIX.match(line)
        assert m, f"line without the log prefix: {line!r}"
        out.append(line[m.end():])
    return out


def mean_abs(a, b):
    return float(np.mean(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture
def logits():
    """Seed 003's forward example: logits around 1e1 whose mean difference is ~2.3e-6."""
    rng = np.random.default_rng(0)
    torch_out = (rng.standard_normal((4, 1000)) * 10).astype(np.float32)
    step = np.float32(2.3e-6)
    paddle_out = (torch_out + step * np.sign(rng.standard_normal(torch_out.shape))).astype(np.float32)
    return torch_out, paddle_out


def save_pair(tmp_path, name, torch_info, paddle_info, ref_suffix="torch"):
    for tag, info in ((ref_suffix, torch_info), ("paddle", paddle_info)):
        logger = ReprodLogger()
        for k, v in info.items():
            logger.add(k, np.asarray(v))
        logger.save(os.fspath(tmp_path / f"{name}_{tag}.npy"))


# --------------------------------------------------------------------------- files


def test_logger_file_is_the_guides_format_and_old_files_load(tmp_path):
    logger = ReprodLogger()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    logger.add("logits", arr)
    arr[0, 0] = 100.0  # the logger keeps a copy
    logger.save(os.fspath(tmp_path / "result" / "forward_paddle.npy"))  # parent is created

    raw = np.load(tmp_path / "result" / "forward_paddle.npy", allow_pickle=True).tolist()
    assert isinstance(raw, dict) and list(raw) == ["logits"]
    assert raw["logits"][0, 0] == 0.0 and raw["logits"].dtype == np.float32

    # a file written the way reprod_log writes it (np.save of a dict) loads too
    np.save(tmp_path / "old.npy", {"loss": np.array(1.5, dtype=np.float32)})
    info = ReprodDiffHelper().load_info(os.fspath(tmp_path / "old.npy"))
    assert info == {"loss": np.array(1.5, dtype=np.float32)}
    # np.save appended ".npy"; load_info finds the file without it as well
    logger.save(os.fspath(tmp_path / "noext"))
    assert list(ReprodDiffHelper().load_info(os.fspath(tmp_path / "noext"))) == ["logits"]


def test_logger_rejects_non_arrays_and_unknown_keys():
    logger = ReprodLogger()

    class FakeTensor:
        pass

    with pytest.raises(PadiffError, match=r"'logits'.*not a numpy array.*\.numpy\(\)"):
        logger.add("logits", FakeTensor())
    logger.add("lr", 0.001)  # numbers and lists become arrays
    logger.add("acc", [0.5, 0.75])
    assert logger.data["lr"].shape == () and logger.data["acc"].shape == (2,)
    with pytest.raises(PadiffError, match="never added"):
        logger.remove("nope")
    logger.remove("lr")
    assert list(logger.data) == ["acc"]


def test_load_info_errors(tmp_path):
    helper = ReprodDiffHelper()
    with pytest.raises(PadiffError, match="no reprod_log file at"):
        helper.load_info(os.fspath(tmp_path / "absent.npy"))
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(PadiffError, match="not a dict of named arrays"):
        helper.load_info(os.fspath(tmp_path / "plain.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(PadiffError, match="cannot read"):
        helper.load_info(os.fspath(tmp_path / "junk.npy"))


# --------------------------------------------------------------------------- reports


def test_seed_003_forward_example(tmp_path, logits, capsys):
    torch_out, paddle_out = logits
    logger = ReprodLogger()
    logger.add("logits", paddle_out)
    logger.save(os.fspath(tmp_path / "result" / "forward_paddle.npy"))
    logger.add("logits", torch_out)
    logger.save(os.fspath(tmp_path / "result" / "forward_torch.npy"))

    helper = ReprodDiffHelper()
    torch_info = helper.load_info(os.fspath(tmp_path / "result" / "forward_torch.npy"))
    paddle_info = helper.load_info(os.fspath(tmp_path / "result" / "forward_paddle.npy"))
    helper.compare_info(torch_info, paddle_info)
    log = tmp_path / "result" / "log" / "forward_diff.log"
    passed = helper.report(path=os.fspath(log))

    value = mean_abs(torch_out, paddle_out)
    assert 2.0e-6 < value < 2.4e-6
    expected = [
        "logits: ",
        f"    mean diff: check passed: False, value: {value!r}",
        "diff check failed",
    ]
    assert passed is False
    assert strip_prefix(log.read_text()) == expected
    assert strip_prefix(capsys.readouterr().out) == expected


def test_relative_threshold_passes_logits_that_absolute_1e6_fails(logits):
    torch_out, paddle_out = logits
    helper = ReprodDiffHelper()
    helper.compare_info({"logits": torch_out}, {"logits": paddle_out})
    assert helper.report(path=None) is False
    assert helper.report(path=None, rel_threshold=1e-6) is True
    mean = mean_abs(torch_out, paddle_out)
    check = helper.last_report.keys[0].methods[0]
    assert check.threshold == pytest.approx(1e-6 + 1e-6 * np.mean(np.abs(torch_out.astype(np.float64))))
    scale = np.mean(np.abs(torch_out.astype(np.float64)))
    # the line names the threshold that judged the key, and the options it came from
    assert render_report(helper.last_report) == [
        "logits: ",
        f"    mean diff: check passed: True, value: {mean!r}, threshold: {check.threshold!r} "
        f"(diff_threshold 1e-06 + rel_threshold 1e-06 x mean |reference| {scale:.6g})",
        "diff check passed",
    ]
    # a relative threshold is no blank cheque: a real bug still fails
    helper.compare_info({"logits": torch_out}, {"logits": torch_out + np.float32(1e-3)})
    assert helper.report(path=None, rel_threshold=1e-6) is False

    # rel_mean is mean|diff| / mean|reference|
    helper.compare_info({"logits": torch_out}, {"logits": paddle_out})
    report = helper.check(diff_method="rel_mean", rel_threshold=1e-6)
    rel = report.keys[0].methods[0].value
    assert rel == pytest.approx(mean / np.mean(np.abs(torch_out.astype(np.float64))))
    assert report.passed and rel < 1e-6


def test_seed_003_backward_example_losses_and_lrs(tmp_path):
    """Seed 003's bp_align log: three float32 losses (about 6.9) differ by 4, 5 and 25 ulps; lrs agree.

    Paddle returned losses of shape [1] where PyTorch returns 0-d; that still compares.
    """
    diffs = [1.9073486328125e-06, 2.384185791015625e-06, 1.1920928955078125e-05]
    torch_losses = [np.array(v, dtype=np.float32) for v in (6.90, 6.85, 6.71)]
    torch_info, paddle_info = {}, {}
    for i, (loss, d) in enumerate(zip(torch_losses, diffs)):
        torch_info[f"loss_{i}"] = loss
        paddle_info[f"loss_{i}"] = np.array([loss + np.float32(d)], dtype=np.float32)
        torch_info[f"lr_{i}"] = np.array(0.001)
        paddle_info[f"lr_{i}"] = np.array(0.001)
    save_pair(tmp_path, "bp_align", torch_info, paddle_info)

    helper = ReprodDiffHelper()
    helper.compare_info(
        helper.load_info(os.fspath(tmp_path / "bp_align_torch.npy")),
        helper.load_info(os.fspath(tmp_path / "bp_align_paddle.npy")),
    )
    log = tmp_path / "log" / "loss_diff.log"
    assert helper.report(path=os.fspath(log)) is False
    assert strip_prefix(log.read_text()) == [
        "loss_0: ",
        "    mean diff: check passed: False, value: 1.9073486328125e-06",
        "lr_0: ",
        "    mean diff: check passed: True, value: 0.0",
        "loss_1: ",
        "    mean diff: check passed: False, value: 2.384185791015625e-06",
        "lr_1: ",
        "    mean diff: check passed: True, value: 0.0",
        "loss_2: ",
        "    mean diff: check passed: False, value: 1.1920928955078125e-05",
        "lr_2: ",
        "    mean diff: check passed: True, value: 0.0",
        "diff check failed",
    ]
    # the guide's "around 1e-6 is aligned" judgement, spelled as a per-key threshold
    assert helper.report(path=None, diff_threshold={"loss_2": 2e-5, "default": 3e-6}) is True


def test_key_on_one_side_only_is_reported_not_crashed(tmp_path):
    helper = ReprodDiffHelper()
    torch_info = {"logits": np.ones(3), "feat": np.zeros(2)}
    paddle_info = {"logits": np.ones(3), "extra": np.zeros(2)}
    helper.compare_info(torch_info, paddle_info, names=("torch", "paddle"))
    log = tmp_path / "diff.log"
    assert helper.report(path=os.fspath(log)) is False
    assert strip_prefix(log.read_text()) == [
        "logits: ",
        "    mean diff: check passed: True, value: 0.0",
        "feat: ",
        "    key missing: check passed: False, not in paddle",
        "extra: ",
        "    key missing: check passed: False, not in torch",
        "diff check failed",
    ]
    assert helper.last_report.failed_keys == ["feat", "extra"]


def test_names_default_to_the_loaded_paths(tmp_path):
    save_pair(tmp_path, "metric", {"acc_top1": 0.5, "acc_top5": 0.9}, {"acc_top1": 0.5})
    helper = ReprodDiffHelper()
    ref = os.fspath(tmp_path / "metric_torch.npy")
    new = os.fspath(tmp_path / "metric_paddle.npy")
    helper.compare_info(helper.load_info(ref), helper.load_info(new))
    assert render_report(helper.check())[2:4] == [
        "acc_top5: ",
        f"    key missing: check passed: False, not in {new}",
    ]


def test_shape_and_type_mismatch_are_reported():
    helper = ReprodDiffHelper()
    helper.compare_info(
        {"w": np.zeros((2, 3)), "loss": np.array(1.0), "cfg": "adam", "nested": {"a": np.ones(2)}},
        {"w": np.zeros((3, 2)), "loss": np.array([1.0]), "cfg": "adam", "nested": {"a": "x"}},
    )
    report = helper.check()
    assert render_report(report) == [
        "w: ",
        "    shape mismatch: check passed: False, info1: (2, 3), info2: (3, 2)",
        "loss: ",
        "    mean diff: check passed: True, value: 0.0",
        "cfg: ",
        "    exact match: check passed: True",
        "nested.a: ",
        "    type mismatch: check passed: False, info1: ndarray, info2: str",
        "diff check failed",
    ]
    assert [k.status for k in report.keys] == ["shape_mismatch", "compared", "not_numeric", "type_mismatch"]


def test_per_key_threshold():
    helper = ReprodDiffHelper()
    helper.compare_info(
        {"logits": np.zeros(4), "feat": np.zeros(4)},
        {"logits": np.full(4, 5e-6), "feat": np.full(4, 2e-6)},
    )
    report = helper.check(diff_threshold={"logits": 1e-5, "default": 1e-6})
    assert [(k.key, k.passed) for k in report.keys] == [("logits", True), ("feat", False)]
    assert not report.passed
    assert helper.check(diff_threshold={"logits": 1e-5, "default": 3e-6}).passed
    # without "default" the other keys keep reprod_log's 1e-6
    assert helper.check(diff_threshold={"logits": 1e-5}).failed_keys == ["feat"]
    with pytest.raises(PadiffError, match=r"neither info: \['logit'\]"):
        helper.check(diff_threshold={"logit": 1e-5})
    with pytest.raises(PadiffError, match="number >= 0"):
        helper.check(diff_threshold=-1.0)
    with pytest.raises(PadiffError, match="unknown diff_method 'median'"):
        helper.check(diff_method="median")


def test_methods_min_max_all_and_allclose():
    ref = np.array([0.0, 1.0, 100.0])
    new = np.array([0.0, 1.0 + 4e-6, 100.0 + 1e-4])
    helper = ReprodDiffHelper()
    helper.compare_info({"x": ref}, {"x": new})
    report = helper.check(diff_method="all")
    values = {m.method: m.value for m in report.keys[0].methods}
    assert [m.method for m in report.keys[0].methods] == ["min", "max", "mean"]
    assert values["min"] == 0.0
    assert values["max"] == pytest.approx(1e-4)
    assert values["mean"] == pytest.approx((4e-6 + 1e-4) / 3)
    assert [m.passed for m in report.keys[0].methods] == [True, False, False]
    # allclose: |new - ref| <= atol + rtol * |ref| elementwise, as np.allclose
    assert helper.check(diff_method="allclose", diff_threshold=1e-8, rel_threshold=1e-5).passed
    assert np.allclose(new, ref, rtol=1e-5, atol=1e-8)
    assert not helper.check(diff_method="allclose", diff_threshold=1e-8, rel_threshold=1e-7).passed
    assert not np.allclose(new, ref, rtol=1e-7, atol=1e-8)


def test_nan_fails_even_though_it_compares_false_with_any_threshold():
    helper = ReprodDiffHelper()
    helper.compare_info({"x": np.array([1.0, 2.0])}, {"x": np.array([1.0, np.nan])})
    report = helper.check(diff_threshold=1.0)
    assert render_report(report) == ["x: ", "    mean diff: check passed: False, value: nan", "diff check failed"]
    # NaN in the same place on both sides is agreement
    helper.compare_info({"x": np.array([1.0, np.nan])}, {"x": np.array([1.0, np.nan])})
    assert helper.check().passed


def test_compare_info_accepts_plain_dicts_scalars_lists_and_rejects_non_dicts():
    helper = ReprodDiffHelper()
    helper.compare_info({"acc": 0.75, "top": [1, 2, 3], "n": 3}, {"acc": 0.75, "top": [1, 2, 4], "n": 3})
    report = helper.check()
    assert [(k.key, k.passed) for k in report.keys] == [("acc", True), ("top", False), ("n", True)]
    assert report.keys[1].methods[0].value == pytest.approx(1 / 3)
    with pytest.raises(PadiffError, match="info2 is a list"):
        helper.compare_info({}, [1, 2])
    fresh = ReprodDiffHelper()
    with pytest.raises(PadiffError, match="call compare_info"):
        fresh.report(path=None)
    fresh.compare_info({}, {})
    assert render_report(fresh.check()) == ["no keys to compare", "diff check failed"]


def test_unwritable_log_path_is_a_padiff_error(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    helper = ReprodDiffHelper()
    helper.compare_info({"x": np.zeros(2)}, {"x": np.zeros(2)})
    target = blocker / "log" / "forward_diff.log"
    with pytest.raises(PadiffError) as err:
        helper.report(path=os.fspath(target))
    assert os.fspath(target) in str(err.value)
    assert "folder you can write to" in str(err.value)
    assert capsys.readouterr().out == ""  # nothing half-printed
    with pytest.raises(PadiffError, match="diff log"):
        helper.report(path=os.fspath(tmp_path))  # a folder, not a file
    with pytest.raises(PadiffError, match="could not write"):
        ReprodLogger().save(os.fspath(blocker / "forward_paddle.npy"))


def test_report_goes_through_the_padiff_reprod_logger(capsys):
    logger = logging.getLogger("padiff.reprod")
    helper = ReprodDiffHelper()
    helper.compare_info({"x": np.zeros(2)}, {"x": np.zeros(2)})
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        assert helper.report(path=None) is True
        assert capsys.readouterr().out == ""
    finally:
        logger.setLevel(old)
    helper.report(path=None)
    assert strip_prefix(capsys.readouterr().out)[-1] == "diff check passed"


# --------------------------------------------------------------------------- checkpoints


def test_check_checkpoints_two_present_one_failing_three_missing(tmp_path, capsys):
    data = tmp_path / "log_reprod"
    data.mkdir()
    save_pair(data, "forward", {"logits": np.ones((2, 5))}, {"logits": np.ones((2, 5))})
    save_pair(data, "metric", {"acc_top1": 0.50, "acc_top5": 0.9}, {"acc_top1": 0.52, "acc_top5": 0.9})
    # a lone file is still a missing pair
    save_pair(data, "loss", {"loss": 1.0}, {"loss": 1.0})
    os.remove(data / "loss_torch.npy")

    out = tmp_path / "logs"
    summary = check_checkpoints(os.fspath(data), out_dir=os.fspath(out))

    assert [(r.name, r.status) for r in summary.results] == [
        ("forward", "passed"),
        ("metric", "failed"),
        ("loss", "missing"),
        ("bp_align", "missing"),
        ("train_align", "missing"),
    ]
    assert not summary.passed
    assert summary["metric"].report.failed_keys == ["acc_top1"]
    assert sorted(os.listdir(out)) == ["forward_diff.log", "metric_diff.log"]
    assert strip_prefix((out / "forward_diff.log").read_text()) == [
        "logits: ",
        "    mean diff: check passed: True, value: 0.0",
        "diff check passed",
    ]
    assert strip_prefix((out / "metric_diff.log").read_text()) == [
        "acc_top1: ",
        f"    mean diff: check passed: False, value: {abs(0.52 - 0.50)!r}",
        "acc_top5: ",
        "    mean diff: check passed: True, value: 0.0",
        "diff check failed",
    ]
    table = [
        "checkpoint   result   detail",
        "forward      passed   forward_diff.log",
        "metric       failed   metric_diff.log (failed keys: acc_top1)",
        "loss         missing  not found: loss_torch.npy or loss_pytorch.npy or loss_ref.npy",
        "bp_align     missing  not found: bp_align_paddle.npy; "
        "bp_align_torch.npy or bp_align_pytorch.npy or bp_align_ref.npy",
        "train_align  missing  not found: train_align_paddle.npy; train_align_benchmark.npy or "
        "train_align_torch.npy or train_align_pytorch.npy or train_align_ref.npy",
        "1 passed, 1 failed, 3 missing",
    ]
    assert render_checkpoint_summary(summary) == table
    assert strip_prefix(capsys.readouterr().out) == table


def test_check_checkpoints_defaults_and_thresholds(tmp_path):
    assert dict(CHECKPOINTS) == {
        "forward": 1e-6, "metric": 1e-6, "loss": 1e-6, "bp_align": 1e-6, "train_align": 0.0015,
    }
    # train_align: benchmark accuracy vs ours, within the guide's 0.15% -> passes
    save_pair(tmp_path, "train_align", {"top1": [0.7655]}, {"top1": [0.7645]}, ref_suffix="benchmark")
    # forward with the guide's other reference names: loss_ref.npy style
    save_pair(tmp_path, "forward", {"logits": np.zeros(3)}, {"logits": np.full(3, 5e-6)}, ref_suffix="ref")
    summary = check_checkpoints(os.fspath(tmp_path), show=False)  # logs next to the files
    assert summary["train_align"].status == "passed"
    assert summary["train_align"].reference_file.endswith("train_align_benchmark.npy")
    assert summary["forward"].status == "failed"
    assert (tmp_path / "train_align_diff.log").is_file() and (tmp_path / "forward_diff.log").is_file()

    looser = check_checkpoints(os.fspath(tmp_path), diff_threshold={"forward": 1e-5}, show=False)
    assert looser["forward"].status == "passed" and looser["train_align"].status == "passed"
    stricter = check_checkpoints(os.fspath(tmp_path), diff_threshold=1e-6, show=False)
    assert stricter["train_align"].status == "failed"
    relative = check_checkpoints(
        os.fspath(tmp_path), diff_threshold={"forward": {"logits": 1e-5}}, show=False
    )
    assert relative["forward"].status == "passed"

    with pytest.raises(PadiffError, match="keyed by checkpoint"):
        check_checkpoints(os.fspath(tmp_path), diff_threshold={"logits": 1e-5}, show=False)
    with pytest.raises(PadiffError, match="is not a folder"):
        check_checkpoints(os.fspath(tmp_path / "nope"), show=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(PadiffError, match=r"blocker.*out_dir="):
        check_checkpoints(os.fspath(tmp_path), out_dir=os.fspath(blocker), show=False)


def test_check_checkpoints_unreadable_file_is_an_error_row(tmp_path):
    (tmp_path / "forward_paddle.npy").write_bytes(b"garbage")
    save_pair(tmp_path, "x", {}, {})
    os.replace(tmp_path / "x_torch.npy", tmp_path / "forward_torch.npy")
    summary = check_checkpoints(os.fspath(tmp_path), show=False)
    assert summary["forward"].status == "error"
    assert "cannot read" in summary["forward"].error
    assert render_checkpoint_summary(summary)[-1] == "4 missing, 1 error"
