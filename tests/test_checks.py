"""compare, check_dataloader, check_schedule and `padiff compare` on real torch and paddle."""

from __future__ import annotations

import os
import warnings
import weakref

import numpy as np
import paddle
import pytest
import torch

import padiff.checks as checks
from padiff.checks import CompareResult, check_dataloader, check_schedule, compare, main_compare
from padiff.compare.metrics import tolerance_for
from padiff.compare.result import AlignResult
from padiff.errors import PadiffError
from padiff.options import build_options

LR = paddle.optimizer.lr
TS = torch.optim.lr_scheduler


def log_dir():
    return os.environ["PADIFF_LOG_DIR"]  # a fresh folder per test (conftest)


def read_log(name):
    with open(os.path.join(log_dir(), name), encoding="utf-8") as fh:
        return fh.read()


# --- compare -----------------------------------------------------------------------------------

def test_compare_nested_values_of_both_frameworks_agree(capsys):
    x = np.arange(6, dtype="float32").reshape(2, 3)
    first = {"logits": [paddle.to_tensor(x), paddle.to_tensor(x * 2)], "ids": np.array([1, 2]), "scale": 0.5,
             "tag": "cls"}
    second = {"logits": (torch.tensor(x), torch.tensor(x * 2)), "ids": torch.tensor([1, 2]), "scale": 0.5,
              "tag": "cls"}
    r = compare(first, second, name="out")
    assert isinstance(r, CompareResult) and isinstance(r, AlignResult)
    assert r and r == True and r.count == 5 and r.mismatches == []  # noqa: E712
    assert [f.what for f in r.findings] == ['out["logits"][0]', 'out["logits"][1]', 'out["ids"]', 'out["scale"]',
                                            'out["tag"]']
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "[padiff] compare `out`: first paddle+numpy+python, second torch+python (the reference); 5 values compared.",
        "[padiff] SUCCESS !!!",
    ]
    assert r.report == out.rstrip("\n")
    assert not os.path.exists(os.path.join(log_dir(), "compare.log"))


def test_compare_reports_id_path_shapes_dtypes_and_figures(capsys):
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)
    y = x.copy()
    y[2, 1] += 0.5
    r = compare({"logits": [paddle.to_tensor(x), paddle.to_tensor(x)]},
                {"logits": [torch.tensor(x), torch.tensor(y)]}, name="out")
    assert r == False and not r  # noqa: E712
    assert len(r.mismatches) == 1 and r.first is r.mismatches[0]
    f = r.first
    assert f.what == 'out["logits"][1]'
    assert (f.test_type, f.ref_type) == ("paddle.Tensor", "torch.Tensor")
    assert (f.diff.shape_a, f.diff.shape_b, f.diff.dtype_a, f.diff.dtype_b) == ((3, 4), (3, 4), "float32", "float32")
    assert f.diff.max_abs == pytest.approx(0.5) and f.diff.max_abs_index == (2, 1) and f.diff.mismatched == 1
    out = capsys.readouterr().out
    log_path = os.path.join(log_dir(), "compare.log")
    assert r.log_files == [log_path]
    assert out.splitlines()[:5] == [
        "[padiff] compare `out`: first paddle, second torch (the reference); 2 values compared.",
        "[padiff] 1 of 2 values differs.",
        '[padiff]     Diff at out["logits"][1]: paddle.Tensor float32 [3, 4] (first) vs torch.Tensor float32 [3, 4] '
        "(second)",
        "Not equal to tolerance rtol=0.0001, atol=0.0001 (x scale, auto)",
        "Mismatched elements: 1 / 12 (8.3%)",
    ]
    assert "Greatest absolute difference: 0.5 at index (2, 1)" in out
    assert out.splitlines()[-2:] == [f"[padiff] The full report is in {log_path}", "[padiff] FAILED !!!"]
    log = read_log("compare.log")
    assert '  ok   out["logits"][0]: float32 vs float32, shape [3, 4], greatest absolute difference 0' in log
    assert '  DIFF out["logits"][1]: float32 vs float32, shape [3, 4], greatest absolute difference 0.5' in log


def test_compare_structure_differences_are_findings_not_crashes(capsys):
    first = {"a": [1.0, 2.0, 3.0], "b": paddle.ones([2]), "only_first": 1}
    second = {"a": [1.0, 2.0], "b": {"x": torch.ones(2)}, "only_second": np.zeros(2)}
    r = compare(first, second, quiet=True)
    assert capsys.readouterr().out == ""
    details = {f.what: f.diff.message() for f in r.mismatches}
    assert details == {
        'value["a"]': "Different lengths: 3 items (first) vs 2 (second); the first 2 were compared.",
        'value["b"]': "Different structures: a paddle.Tensor (first) vs a dict (second).",
        'value["only_first"]': "Only the first value has the key 'only_first'; the second has the keys 'a', 'b', "
                               "'only_second'.",
        'value["only_second"]': "Only the second value has the key 'only_second'; the first has the keys 'a', 'b', "
                                "'only_first'.",
    }
    assert [f.what for f in r.findings if f.passed] == ['value["a"][0]', 'value["a"][1]']
    assert '[padiff]     Diff at value["a"]:\nDifferent lengths: 3 items' in r.report
    assert '[padiff]     And 1 more: value["only_second"]' in r.report


def test_compare_dtype_kind_is_a_mismatch_precision_is_a_note():
    r = compare(paddle.to_tensor([1, 2, 3]), torch.tensor([1.0, 2.0, 3.0]), name="ids", quiet=True)
    assert r == False  # noqa: E712
    assert r.first.diff.problem == "type"
    assert r.first.diff.message() == ("Dtypes differ in kind: int64 (first) vs float32 (second), integer against "
                                      "floating point (a missing cast?). The values are equal within tolerance.")

    x = np.random.RandomState(0).randn(4, 5)
    r = compare(paddle.to_tensor(x.astype("float32")), torch.tensor(x), name="logits", quiet=True)
    assert r == True  # noqa: E712
    assert r.notes == ["logits: dtypes differ, float32 (first) vs float64 (second); the values were compared with "
                       "the float32 tolerance."]
    assert r.first is None and r.findings[0].diff.tolerance.source == "float32"
    assert "[padiff] NOTE: logits: dtypes differ, float32 (first) vs float64 (second)" in r.report

    # Python numbers carry no dtype: only their value counts.
    assert compare(paddle.to_tensor(3.0), 3, quiet=True) == True  # noqa: E712


def test_compare_tolerance_keywords_behave_as_in_auto_diff():
    x = np.linspace(1, 2, 10, dtype="float32")
    a, b = paddle.to_tensor(x + 1e-3), torch.tensor(x)
    default = compare(a, b, quiet=True)
    assert default == False and default.first.diff.tolerance == tolerance_for(build_options(None), "float32",  # noqa
                                                                               "float32", "value")
    loose = compare(a, b, atol=1e-2, quiet=True)
    assert loose == True  # noqa: E712
    tol = loose.findings[0].diff.tolerance
    assert tol.auto and tol.allowance == (1e-2, 1e-7) and loose.findings[0].diff.by_allowance
    exact = compare(a, b, atol=1e-2, compare_mode="strict", quiet=True)
    assert exact == True and exact.findings[0].diff.tolerance.atol == 1e-2  # noqa: E712
    assert not exact.findings[0].diff.tolerance.auto
    assert compare(a, b, options={"atol": 1e-2}, quiet=True) == True  # noqa: E712
    assert compare(a, b, compare_mode="mean", atol=2e-3, quiet=True) == True  # noqa: E712
    with pytest.raises(PadiffError, match="Unknown option 'atl'. Did you mean 'atol'?"):
        compare(a, b, atl=1e-2)


def test_compare_a_shape_difference_and_a_layout_hint():
    x = np.random.RandomState(1).rand(2, 3, 4, 5).astype("float32")
    r = compare(paddle.to_tensor(x.transpose(0, 2, 3, 1)), torch.tensor(x), name="image", quiet=True)
    assert r.first.diff.message(("first", "second")) == "Shapes differ: [2, 4, 5, 3] (first) vs [2, 3, 4, 5] (second)."
    assert r.first.cause.startswith("The shapes hold the same sizes in another order: a layout difference")
    assert "[padiff]     Hint: The shapes hold the same sizes in another order" in r.report
    # One element each: compared as scalars, with a note.
    r = compare(paddle.to_tensor([0.5]), torch.tensor(0.5), name="acc", quiet=True)
    assert r == True and r.notes == [  # noqa: E712
        "acc: shapes differ, [1] (first) vs [] (second); one element each, compared as scalars."]


def test_compare_what_it_cannot_compare_is_a_padiff_error():
    with pytest.raises(PadiffError, match=r'value\["img"\] \(first\) is a builtins.object, which padiff cannot '
                                          r"compare: it compares tensors, numpy arrays, numbers and strings"):
        compare({"img": object()}, {"img": np.zeros(2)})


def _paddle_topk(logits, labels):
    lab = paddle.to_tensor(labels).unsqueeze(1)
    x = paddle.to_tensor(logits)
    return {"top1": paddle.metric.accuracy(x, lab, k=1), "top5": paddle.metric.accuracy(x, lab, k=5)}


def _torch_topk(logits, labels):
    x, lab = torch.tensor(logits), torch.tensor(labels)
    top5 = x.topk(5, dim=1).indices
    hits = top5 == lab[:, None]
    return {"top1": hits[:, :1].any(1).float().mean(), "top5": hits.any(1).float().mean()}


def test_compare_metric_outputs_top1_top5():
    rng = np.random.RandomState(3)
    logits = rng.randn(64, 10).astype("float32")
    labels = rng.randint(0, 10, 64).astype("int64")
    p, t = _paddle_topk(logits, labels), _torch_topk(logits, labels)
    r = compare(p, t, name="metric", quiet=True)
    assert r == True and r.count == 2  # noqa: E712
    assert 0 < float(t["top1"]) < float(t["top5"]) < 1

    # The ported model's logits differ on a few samples: top-1 moves, top-5 does not.
    wrong = logits.copy()
    order = np.argsort(-logits, axis=1)
    flips = [i for i in range(64) if order[i, 0] == labels[i]][:2]
    wrong[flips, labels[flips]] = logits[flips, order[flips, 1]] - 1e-3  # the right class drops to 2nd place
    r = compare(_paddle_topk(wrong, labels), t, name="metric", quiet=True)
    assert r == False and [f.what for f in r.mismatches] == ['metric["top1"]']  # noqa: E712
    d = r.first.diff
    assert d.value_a == pytest.approx(float(t["top1"]) - 2 / 64) and d.value_b == pytest.approx(float(t["top1"]))
    assert f"Greatest absolute difference: {2 / 64:.6g} at index ()" in r.report


# --- data loaders ------------------------------------------------------------------------------

IMAGES = np.random.RandomState(0).randint(0, 256, (8, 6, 6, 3)).astype("uint8")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class PaddleImages(paddle.io.Dataset):
    """The paddle port: HWC uint8 -> normalised CHW float32 with paddle.vision's Normalize."""

    def __init__(self, mean=MEAN, n=len(IMAGES)):
        self.n = n
        self.norm = paddle.vision.transforms.Normalize(mean=mean, std=STD, data_format="CHW")

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = paddle.to_tensor(IMAGES[i].transpose(2, 0, 1).astype("float32") / 255.0)
        return {"image": self.norm(x).numpy(), "label": np.int64(i % 3)}


class TorchImages(torch.utils.data.Dataset):
    """The reference: the same images normalised with torch ops."""

    def __init__(self, n=len(IMAGES)):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.from_numpy(IMAGES[i]).permute(2, 0, 1).float() / 255.0
        x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        return {"image": x, "label": i % 3}


def test_image_pipelines_with_one_channel_normalised_differently(capsys):
    mean = list(MEAN)
    mean[1] += 0.01  # the port's green mean is off by 0.01
    r = check_dataloader(paddle.io.DataLoader(PaddleImages(mean), batch_size=2),
                         torch.utils.data.DataLoader(TorchImages(), batch_size=2))
    assert r == False and r.index == 0 and r.stop == "diff"  # noqa: E712
    assert r.first.what == 'batch["image"]' and r.first.step == 0
    assert [(f.what, f.passed) for f in r.findings] == [('batch["image"]', False), ('batch["label"]', True)]
    assert r.lengths == {"dataset": (8, 8), "batches": (4, 4)}
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        "[padiff] Data loaders: first paddle DataLoader, second torch DataLoader (the reference).",
        "[padiff]     len(dataset) 8 vs 8; len(loader) 4 vs 4",
        "[padiff] Diff found in batch 0.",
        '[padiff]     Diff at batch["image"]: paddle.Tensor float32 [2, 3, 6, 6] (first) vs torch.Tensor float32 '
        "[2, 3, 6, 6] (second)",
    ]
    hint = [line for line in out if "Hint:" in line]
    head, _, tail = hint[0].partition(", off by a constant ")
    assert head == "[padiff]     Hint: Only channel 1 (axis 1) of 3 differs"
    value, _, rest = tail.partition(" ")
    assert float(value) == pytest.approx(-0.01 / STD[1], rel=1e-5)
    assert rest == "(first - second). A per-channel normalisation (mean: an offset; std: a scale) that differs?"
    assert '[padiff]     Agree in batch 0: batch["label"]' in out
    log = read_log("dataloader_diff.log")
    assert "Diff found in batch 0." in log and '  ok   batch["label"]: int64 vs int64, shape [2]' in log


def test_identical_pipelines_agree_up_to_max_batches(capsys):
    r = check_dataloader(paddle.io.DataLoader(PaddleImages(), batch_size=2),
                         torch.utils.data.DataLoader(TorchImages(), batch_size=2), max_batches=2)
    assert r == True and r.count == 2 and r.stop == "max_batches" and r.index is None  # noqa: E712
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "[padiff] The first 2 batches agree (max_batches=2).", "[padiff] SUCCESS !!!"]
    r = check_dataloader(paddle.io.DataLoader(PaddleImages(), batch_size=2),
                         torch.utils.data.DataLoader(TorchImages(), batch_size=2))
    assert r == True and r.count == 4 and r.stop == "end"  # noqa: E712
    assert "[padiff] All 4 batches agree." in r.report
    assert not os.path.exists(os.path.join(log_dir(), "dataloader_diff.log"))


def test_a_loader_that_ends_early_and_dataset_lengths():
    r = check_dataloader(paddle.io.DataLoader(PaddleImages(n=6), batch_size=2),
                         torch.utils.data.DataLoader(TorchImages(), batch_size=2), quiet=True)
    assert r == False and r.lengths == {"dataset": (6, 8), "batches": (3, 4)}  # noqa: E712
    assert [f.what for f in r.mismatches] == ["len(dataset)", "batch count"]
    assert r.first.diff.message() == ("The datasets hold different numbers of samples: 6 (first) vs 8 (second), "
                                      "from len(loader.dataset).")
    assert r.mismatches[1].diff.message() == "The first loader ended after 3 batches; the second loader still " \
                                             "yielded batch 3."
    assert r.index == 3 and r.count == 3 and r.stop == "length"
    assert "[padiff] The loaders differ in length: one ended at batch 3." in r.report

    # Same samples, different batch_size: the batch counts and the first batch's shapes tell.
    r = check_dataloader(paddle.io.DataLoader(PaddleImages(), batch_size=3),
                         torch.utils.data.DataLoader(TorchImages(), batch_size=2), quiet=True)
    assert [f.what for f in r.mismatches] == ["len(loader)", 'batch["image"]', 'batch["label"]']
    assert r.mismatches[0].diff.message().endswith("from len(loader): a different batch_size or drop_last?")
    assert r.mismatches[1].cause == "The shapes differ only in the first axis: a different batch size, or drop_last?"


def test_generators_a_later_batch_and_only_the_current_pair_in_memory():
    live = []

    def make(i, delta=0.0):
        for ref in live:  # padiff let go of every earlier batch before asking for the next one
            assert ref() is None, "padiff held on to an earlier batch"
        arr = np.full((2, 5), float(i)) + delta
        live.append(weakref.ref(arr))
        return arr

    def first():
        for i in range(5):
            yield [make(i, delta=0.25 if i == 3 else 0.0), i]

    def second():
        for i in range(5):
            yield (torch.full((2, 5), float(i), dtype=torch.float64), i)

    r = check_dataloader(first(), second(), quiet=True)
    assert r == False and r.index == 3 and r.count == 4  # noqa: E712
    assert (r.test_label, r.ref_label) == ("generator", "generator")
    assert r.first.what == "batch[0]" and r.first.diff.max_abs == pytest.approx(0.25)
    assert r.lengths == {}
    assert "[padiff] Diff found in batch 3." in r.report
    assert "[padiff] 3 batches agreed before batch 3; padiff stopped at the first difference." in r.report


def test_dataloader_user_mistakes_are_padiff_errors():
    with pytest.raises(PadiffError, match="The first loader is a int, not an iterable of batches"):
        check_dataloader(3, [])
    with pytest.raises(PadiffError, match="max_batches must be a whole number >= 1"):
        check_dataloader([], [], max_batches=0)

    def broken():
        yield np.zeros(2)
        raise KeyError("missing.jpg")

    with pytest.raises(PadiffError, match="The second loader raised KeyError while producing batch 1: 'missing.jpg'"):
        check_dataloader([np.zeros(2), np.zeros(2)], broken(), quiet=True)


# --- learning-rate schedules -------------------------------------------------------------------

def sgd(lr=0.1, momentum=0.0, groups=1):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr / (10 ** g)} for g in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


AGREEING = {
    "step decay": lambda: (LR.StepDecay(0.1, step_size=30, gamma=0.1), TS.StepLR(sgd(), step_size=30, gamma=0.1)),
    "multi-step": lambda: (LR.MultiStepDecay(0.1, milestones=[30, 60, 90], gamma=0.1),
                           TS.MultiStepLR(sgd(), milestones=[30, 60, 90], gamma=0.1)),
    "cosine annealing": lambda: (LR.CosineAnnealingDecay(0.1, T_max=40), TS.CosineAnnealingLR(sgd(), T_max=40)),
    "linear warmup": lambda: (LR.LinearWarmup(0.1, warmup_steps=10, start_lr=0.01, end_lr=0.1),
                              TS.LinearLR(sgd(), start_factor=0.1, total_iters=10)),
    "one-cycle": lambda: (LR.OneCycleLR(0.1, total_steps=100, end_learning_rate=1e-4),
                          TS.OneCycleLR(sgd(momentum=0.9), max_lr=0.1, total_steps=100, final_div_factor=40)),
}


@pytest.mark.parametrize("kind", list(AGREEING))
def test_schedules_that_agree_over_100_steps(kind, capsys):
    p, t = AGREEING[kind]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()" must not show
        r = check_schedule(p, t, steps=100)
    assert r == True and r.count == 100 and len(r.findings) == 100 and r.index is None  # noqa: E712
    assert len(r.values[0]) == len(r.values[1]) == 100
    assert np.allclose(r.values[0], r.values[1], rtol=1e-12, atol=0)
    assert r.values[1][-1] == t.optimizer.param_groups[0]["lr"]  # read from torch's optimizer, stepped 99 times
    assert len(set(r.values[0])) > 2  # the schedule did move
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == ["[padiff] The learning rates agree at all 100 steps.", "[padiff] SUCCESS !!!"]
    assert out[0].startswith("[padiff] Learning rates over 100 steps: first paddle ")


def test_warmup_defaults_differ_first_step_reported(capsys):
    # paddle's LinearWarmup starts at start_lr (here 0); torch's LinearLR starts at start_factor=1/3 by default.
    r = check_schedule(LR.LinearWarmup(0.1, warmup_steps=10, start_lr=0.0, end_lr=0.1),
                       TS.LinearLR(sgd(), total_iters=10), steps=100)
    assert r == False and r.index == 0 and len(r.mismatches) == 10  # noqa: E712
    assert [f.step for f in r.mismatches] == list(range(10))
    out = capsys.readouterr().out.splitlines()
    assert out[:5] == [
        "[padiff] Learning rates over 100 steps: first paddle LinearWarmup, second torch LinearLR (the reference).",
        "[padiff] 10 of 100 steps differ; the first differing step is 0: 0 (first) vs 0.0333333 (second).",
        "[padiff]       step  first         second",
        "[padiff]          0  0             0.0333333     <--- differs",
        "[padiff]          1  0.01          0.04          <--- differs",
    ]
    log = read_log("schedule_diff.log")
    assert "[padiff]         10  0.1           0.1" in log and "[padiff]         99  0.1           0.1" in log


def test_one_cycle_defaults_differ_first_step_reported():
    # paddle ends at end_learning_rate=1e-4; torch at max_lr / div_factor / final_div_factor = 4e-7.
    r = check_schedule(LR.OneCycleLR(0.1, total_steps=100),
                       TS.OneCycleLR(sgd(momentum=0.9), max_lr=0.1, total_steps=100), steps=100, quiet=True)
    assert r == False and r.index == 30  # noqa: E712 - the annealing phase starts at step 30
    assert r.values[0][:30] == r.values[1][:30]
    assert r.values[0][-1] == pytest.approx(1e-4) and r.values[1][-1] == pytest.approx(4e-7)
    assert (f"the first differing step is 30: {r.values[0][30]:.7g} (first) vs {r.values[1][30]:.7g} (second)."
            in r.report)
    assert r.first.diff.tolerance.source == "float64"  # Python doubles on both sides


def test_callables_and_lists_as_schedules():
    def cosine(step):
        return 0.05 * (1 + np.cos(np.pi * step / 100))

    assert check_schedule(LR.CosineAnnealingDecay(0.1, T_max=100), cosine, steps=100, quiet=True) == True  # noqa
    values = [cosine(s) for s in range(50)]
    r = check_schedule(values, lambda s: paddle.to_tensor(cosine(s), dtype="float32"), steps=50, quiet=True)
    assert r == True and (r.test_label, r.ref_label) == ("list of 50 values", "function <lambda>")  # noqa: E712
    assert r.findings[0].diff.tolerance.source == "float32"
    with pytest.raises(PadiffError, match="The first schedule is a sequence of 50 learning rates, fewer than "
                                          "steps=60: pass at least 60, or lower steps."):
        check_schedule(values, cosine, steps=60)


def test_schedule_user_mistakes_are_padiff_errors():
    opt = sgd()
    with pytest.raises(PadiffError, match=r"The second schedule is a SGD \(an optimizer: pass its scheduler\)"):
        check_schedule(LR.StepDecay(0.1, 10), opt, steps=5)
    with pytest.raises(PadiffError, match="The first schedule is a paddle ReduceOnPlateau, which steps on a metric"):
        check_schedule(LR.ReduceOnPlateau(0.1), TS.StepLR(opt, 10), steps=5)
    with pytest.raises(PadiffError, match="steps must be a whole number >= 1, got 0"):
        check_schedule(LR.StepDecay(0.1, 10), TS.StepLR(opt, 10), steps=0)
    with pytest.raises(PadiffError, match=r"The second schedule \(torch OneCycleLR\) raised ValueError when stepped "
                                          r"after step 10: Tried to step 11 times"):
        check_schedule(LR.OneCycleLR(0.1, total_steps=100),
                       TS.OneCycleLR(sgd(momentum=0.9), max_lr=0.1, total_steps=10), steps=20, quiet=True)


def test_torch_optimizer_with_several_param_groups_compares_the_first():
    r = check_schedule(LR.StepDecay(0.1, 10), TS.StepLR(sgd(groups=2), 10), steps=30, quiet=True)
    assert r == True  # noqa: E712
    assert r.notes == ["The second schedule's optimizer has 2 parameter groups with different learning rates; "
                       "padiff compared the first group's."]


# --- the command line --------------------------------------------------------------------------

def test_main_compare_on_saved_files(tmp_path, capsys):
    x = np.random.RandomState(5).randn(3, 4).astype("float32")
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x + 1e-2)
    np.savez(tmp_path / "c.npz", logits=x, labels=np.arange(3))
    np.savez(tmp_path / "d.npz", logits=x, labels=np.arange(3))
    np.save(tmp_path / "fwd_paddle.npy", {"logits": x, "loss": np.float32(1.5)}, allow_pickle=True)
    np.save(tmp_path / "fwd_torch.npy", {"logits": x + 1e-6, "loss": np.float32(1.5)}, allow_pickle=True)
    logs = str(tmp_path / "logs")

    assert main_compare([str(tmp_path / "c.npz"), str(tmp_path / "d.npz")]) == 0
    assert main_compare([str(tmp_path / "fwd_paddle.npy"), str(tmp_path / "fwd_torch.npy"), "--atol", "1e-5"]) == 0
    assert "[padiff] SUCCESS !!!" in capsys.readouterr().out
    assert main_compare([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--log-dir", logs,
                         "--name", "logits"]) == 1
    out = capsys.readouterr().out
    assert "[padiff]     Diff at logits: numpy.ndarray float32 [3, 4] (first) vs numpy.ndarray float32 [3, 4]" in out
    assert os.path.isfile(os.path.join(logs, "compare.log"))
    assert main_compare([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--atol", "0.02", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main_compare([str(tmp_path / "a.npy"), str(tmp_path / "missing.npy")]) == 2
    assert "padiff compare: error: No such file: " in capsys.readouterr().err
    (tmp_path / "junk.npy").write_text("not numpy")
    assert main_compare([str(tmp_path / "a.npy"), str(tmp_path / "junk.npy")]) == 2
    assert "as a numpy file (.npy or .npz)" in capsys.readouterr().err


def test_load_saved_reads_reprod_dicts(tmp_path):
    np.save(tmp_path / "m.npy", {"top1": np.array(0.5)}, allow_pickle=True)
    assert checks.load_saved(str(tmp_path / "m.npy")) == {"top1": np.array(0.5)}


def test_compare_a_number_against_a_string_and_shape_with_dtype():
    r = compare({"n": paddle.to_tensor([1.0]), "s": "a"}, {"n": "1.0", "s": "b"}, quiet=True)
    assert [f.diff.message() for f in r.mismatches] == [
        "A paddle.Tensor (first) vs a str (second): one holds numbers, the other does not.",
        "Values differ: 'a' (first) vs 'b' (second).",
    ]
    r = compare(paddle.to_tensor([1, 2, 3]), torch.tensor([1.0, 2.0]), name="ids", quiet=True)
    assert r.first.diff.message(("first", "second")) == "Shapes differ: [3] (first) vs [2] (second)."
    assert r.notes == ["ids: dtypes differ too, int64 (first) vs float32 (second)."]
