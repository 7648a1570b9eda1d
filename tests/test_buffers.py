"""Reused memory (issue 18): the kept copies of records go to an arena that stays resident
between runs, large comparisons work in reused buffers, and neither changes a finding."""

import numpy as np
import paddle
import pytest
import torch

import models
import padiff
from padiff import auto_diff
from padiff.compare import scratch
from padiff.frameworks import adapter_for
from padiff.record import arena, recorder
from padiff.record import spill as spill_module
from padiff.record.spill import Spill


def _run(bug="gelu_tanh", **options):
    x = np.random.default_rng(0).standard_normal((4, 128, 64)).astype("float32")  # 32 Ki elements
    paddle_model, torch_model = models.encoder_pair(bug=bug, dim=64, hidden=256, depth=2)
    return auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}),
                     options=options)


def _figures(result):
    return [bool(result), result.first and str(result.first)] + [
        (f.stage, f.ref_path, f.test_path, f.what, f.diff.max_abs, f.diff.rel_l2, f.diff.max_rel, f.diff.cosine,
         f.diff.mismatched, f.passed) for f in result.steps[0].all_findings()]


@pytest.fixture(autouse=True)
def _fresh_arenas():
    padiff.release_buffers()
    yield
    padiff.release_buffers()


def test_a_second_run_copies_its_records_into_the_first_runs_arena_with_the_same_findings(monkeypatch):
    run = lambda: _run(memory_budget_mb=256)  # records within a budget go to the arena
    first = _figures(run())
    kept = sorted(arena._free, key=lambda a: -a.capacity)
    assert len(kept) == 2 and kept[1].capacity > 1 << 20  # one per model, each about its records' size
    buffers = {id(a.buf) for a in kept}
    copied = []
    real_copy = arena.Arena.copy
    monkeypatch.setattr(arena.Arena, "copy", lambda self, v: copied.append(self.capacity) or real_copy(self, v))
    second = _figures(run())
    assert {id(a.buf) for a in arena._free} == buffers  # the same resident memory, not new
    assert copied and min(copied) > 0
    monkeypatch.setitem(recorder.FAST, "reuse", False)
    assert _figures(run()) == second == first
    assert _figures(_run()) == first  # and the default budget spills them: the same findings
    assert second[0] is False and "gelu" in second[1]


def test_large_comparisons_work_in_reused_buffers_with_the_same_figures(monkeypatch):
    taken = []
    real_take = scratch.take
    monkeypatch.setattr(scratch, "take", lambda n, dt: taken.append(n) or real_take(n, dt))
    reused = _figures(_run())
    assert max(taken) >= scratch.MIN_ELEMENTS
    monkeypatch.setattr(scratch, "MIN_ELEMENTS", 1 << 62)
    assert _figures(_run()) == reused


def test_an_arena_whose_records_are_still_held_is_not_written_over():
    a_values = np.arange(1 << 15, dtype=np.float32)  # 128 KiB: large enough for the arena
    with Spill(None, reuse=True) as spill:  # a first run: its arena learns the size
        assert spill.keep(np.ones(1 << 15, np.float32), view=True).base is None
    with Spill(None, reuse=True) as spill:
        held = spill.keep(a_values, view=True)
    assert held.base is not None and not held.flags.writeable  # a slice of an arena, read-only
    with pytest.raises(ValueError):
        held[0] = 5.0
    with Spill(None, reuse=True) as spill:
        other = spill.keep(np.full(1 << 15, 7, np.float32), view=True)
        assert other.base is not held.base  # the held arena was not handed out again
    np.testing.assert_array_equal(held, a_values)


def test_an_arena_grows_to_what_a_run_kept_within_its_budget_and_release_buffers_lets_go():
    budget = 256 << 10
    with Spill(budget, reuse=True) as spill:
        for _ in range(3):
            spill.keep(np.ones(32 << 10, np.float32), view=True)  # 128 KiB each: the third goes to the file
        assert spill.folder is not None
    (grown,) = arena._free
    assert grown.capacity == budget  # two records, and no more than the budget
    with Spill(budget, reuse=True) as spill:
        kept = spill.keep(np.ones(32 << 10, np.float32), view=True)
        assert kept.base is grown.buf
        del kept
        assert spill.keep(np.ones(100, np.float32), view=True).base is None  # a small one: fresh memory
    assert padiff.release_buffers() == budget + (128 << 10)  # the arena and the kept spill file
    assert arena._free == [] and spill_module._free_files == []


def test_a_spill_file_is_written_over_by_the_next_run_unless_a_map_of_it_is_still_read(tmp_path, monkeypatch):
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    big = lambda v: np.full(32 << 10, v, np.float32)  # 128 KiB: over a budget of 0
    spilled = lambda: sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("padiff-spill-"))
    with Spill(0, reuse=True) as spill:
        first = spill.keep(big(1), view=True)
        folder = spill.folder
        np.testing.assert_array_equal(first, big(1))
        del first  # read and dropped, as a run drops its records once compared
    assert spilled() == [os.path.basename(folder)]  # kept for the next run
    with Spill(0, reuse=True) as spill:
        held = spill.keep(big(2), view=True)[1:]  # a view of the record outlives the record itself
        assert spill.folder == folder  # the same file, written over from its start
        assert spill._file.end == 128 << 10  # from offset 0: the first run's array is written over
    assert spilled() == []  # a map of it is still read at the end of the run: not kept
    np.testing.assert_array_equal(held, big(2)[1:])  # and the map still reads what was written
    with Spill(0, reuse=True) as spill:
        spill.keep(big(3), view=True)
        assert spill.folder != folder
    assert len(spilled()) == 1
    assert padiff.release_buffers() == 128 << 10
    assert spilled() == []
    for arrays in (3, 1):  # a kept file is cut to what its last run wrote
        with Spill(0, reuse=True) as spill:
            for _ in range(arrays):
                spill.keep(big(5), view=True)
            folder = spill.folder
        assert os.path.getsize(os.path.join(folder, "records.bin")) == arrays * (128 << 10)
    padiff.release_buffers()
    with Spill(0) as spill:  # without reuse the file goes at the end of the run
        spill.keep(big(4), view=True)
        assert spill.folder is not None
    assert spilled() == []


def _max_relative_plain(err, mag_b):
    """The greatest relative difference as it was computed before the two-pass shortcut."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = err / mag_b
    max_rel = float(np.fmax.reduce(rel))
    if np.isnan(max_rel):
        return 0.0, 0
    return max_rel, int((rel == max_rel).argmax())


@pytest.mark.parametrize("n", [7, 300, 1 << 15])
def test_the_greatest_relative_difference_is_the_plain_one_with_zeros_ties_and_infinities(n):
    import warnings

    from padiff.compare import metrics

    rng = np.random.default_rng(n)
    for case in range(40):
        b = rng.standard_normal(n).astype(np.float32)
        a = b + rng.standard_normal(n).astype(np.float32) * np.float32(10.0 ** -rng.integers(1, 8))
        if case % 4 == 1:  # zeros in both: 0/0, ignored
            idx = rng.integers(0, n, size=max(1, n // 5))
            a[idx] = b[idx] = 0
        if case % 4 == 2:  # a zero reference against a difference: infinitely relative
            b[rng.integers(0, n)] = 0
        if case % 4 == 3:  # ties: the first greatest is the one shown
            a[:] = b * 2
        err = np.abs(a - b)
        mag = np.abs(b)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning reaches the user
            got = metrics._max_relative(err, mag, np.empty_like(err))
        assert got == _max_relative_plain(err, mag), case


def test_paddle_records_read_through_dlpack_give_the_findings_of_the_copying_path(monkeypatch):
    from padiff.frameworks import paddle as paddle_adapter

    fast = _figures(_run())
    real = paddle_adapter.Adapter.host_view
    monkeypatch.setattr(paddle_adapter.Adapter, "host_view",  # as before: none for a tensor needing gradients
                        lambda self, t: None if not t.stop_gradient else real(self, t))
    assert _figures(_run()) == fast


def test_paddle_shows_a_tensor_that_requires_gradients_without_a_copy():
    t = paddle.to_tensor(np.arange(6, dtype="float32").reshape(2, 3), stop_gradient=False)
    view = adapter_for(t).host_view(t)
    assert view is not None and view.shape == (2, 3)
    np.testing.assert_array_equal(view, np.arange(6, dtype="float32").reshape(2, 3))


def _whole(monkeypatch):
    """Compare whole arrays only (the blocked path off)."""
    from padiff.compare import metrics
    monkeypatch.setattr(metrics, "BLOCK", 1 << 62)


def _blocked_cases():
    rng = np.random.default_rng(3)
    n = 3 * (1 << 16) + 5  # three whole blocks and a short one
    b = rng.standard_normal(n).astype(np.float32)
    close = b + rng.standard_normal(n).astype(np.float32) * 1e-7
    zeros = b.copy()
    zeros[::7] = 0.0  # 0/0 in the relative difference: no error
    near_zero = zeros.copy()
    near_zero[5::7] = 0.0
    near_zero[7 * 1000] = 1e-9  # a tiny error where the reference is zero: infinitely relative
    tie = close.copy()
    tie[[10, (1 << 16) + 10]] = b[[10, (1 << 16) + 10]] + 3e-5  # two equal greatest differences
    over = close.copy()
    over[(2 << 16) + 3] += 0.5  # over tolerance: counted on the whole arrays
    nan = close.copy()
    nan[(1 << 16) + 1] = np.nan
    l2_only = b * np.float32(1 + 1.5e-4)  # every element within the elementwise rule, too much in L2
    tiny = (b * 1e-20).astype(np.float32)
    return [("close", close, b), ("equal", b.copy(), b), ("zeros", zeros, near_zero), ("tie", tie, b),
            ("over", over, b), ("nan", nan, b), ("l2 only", l2_only, b), ("tiny", tiny, tiny * 1.0000001),
            ("float64", close.astype(np.float64), b), ("2d", close[:-5].reshape(3, -1)[:, 1:], b[:-5].reshape(3, -1)[:, 1:])]


@pytest.mark.parametrize("case", range(10))
@pytest.mark.parametrize("allowance", [False, True])
def test_a_large_comparison_worked_out_in_blocks_gives_the_whole_arrays_figures(monkeypatch, case, allowance):
    from padiff.compare import metrics
    from padiff.options import Options

    name, a, b = _blocked_cases()[case]
    opts = Options(atol=1e-3, rtol=1e-3) if allowance else Options()
    tol = metrics.tolerance_for(opts, str(a.dtype), str(b.dtype), stage="forward")
    blocked = metrics.compare_arrays(a, b, tol)
    _whole(monkeypatch)
    whole = metrics.compare_arrays(a, b, tol)
    exact = ("passed", "mismatched", "max_abs", "max_abs_index", "max_rel", "max_rel_index", "allowed_at_max",
             "value_a", "value_b", "scale", "flips", "by_allowance", "problem", "shape_a", "shape_b")
    assert {f: getattr(blocked, f) for f in exact} == {f: getattr(whole, f) for f in exact}, name
    for f in ("rel_l2", "cosine", "rel_l2_rest", "rms_error"):  # sums: added up in another order
        assert getattr(blocked, f) == pytest.approx(getattr(whole, f), rel=1e-5, abs=1e-12), (name, f)
    if name == "l2 only":  # the blocked path found it, the allowance passes it (on the whole arrays)
        assert whole.mismatched == 0 and whole.passed == whole.by_allowance == allowance


def test_large_comparisons_in_blocks_give_a_runs_findings(monkeypatch):
    def run():
        x = np.random.default_rng(0).standard_normal((4, 128, 160)).astype("float32")  # 80 Ki elements
        paddle_model, torch_model = models.encoder_pair(bug="gelu_tanh", dim=160, hidden=640, depth=2)
        result = auto_diff(paddle_model, torch_model, ({"x": paddle.to_tensor(x)}, {"x": torch.tensor(x)}))
        return [(bool(result), result.first and str(result.first))] + [
            (f.stage, f.ref_path, f.what, f.passed, f.diff.max_abs, f.diff.max_rel, f.diff.mismatched,
             f.diff.numel, f.diff.rel_l2, f.diff.cosine)
            for f in result.steps[0].all_findings()]

    from padiff.compare import metrics
    blocks = []
    real = metrics._compare_blocks
    monkeypatch.setattr(metrics, "_compare_blocks", lambda *a: blocks.append(a[0].size) or real(*a))
    blocked = run()
    assert blocks and min(blocks) > metrics.BLOCK
    _whole(monkeypatch)
    whole = run()
    assert blocked[0] == whole[0] and blocked[0][0] is False and "gelu" in blocked[0][1]
    assert len(blocked) == len(whole)
    for got, want in zip(blocked[1:], whole[1:]):
        assert got[:8] == want[:8]
        assert got[8:] == pytest.approx(want[8:], rel=1e-5, abs=1e-9)


def _rss_file_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:")) / 1024


def test_a_spilled_array_read_and_released_leaves_the_process(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    values = np.arange(16 << 20, dtype=np.float32)  # 64 MiB
    with Spill(0, reuse=True) as spill:
        kept = spill.keep(values, view=True)
        before = _rss_file_mib()
        assert float(kept[1:].sum(dtype=np.float64)) == float(values[1:].sum(dtype=np.float64))
        assert _rss_file_mib() > before + 48  # its pages are mapped while it is read
        spill_module.release(kept)
        assert _rss_file_mib() < before + 8  # and handed back once released
        np.testing.assert_array_equal(kept[:5], values[:5])  # still readable: the file holds it
        del kept


def test_auto_diff_spares_the_collector_the_objects_that_were_there_and_hands_them_back(monkeypatch):
    import gc

    from padiff import _memory
    from padiff.run import live

    seen = []
    real = live.compare_step
    monkeypatch.setattr(live, "compare_step", lambda *a, **k: seen.append(gc.get_freeze_count()) or real(*a, **k))
    assert gc.get_freeze_count() == 0
    frozen = _figures(_run())
    assert seen[-1] > 10000  # the frameworks' and the models' objects, while padiff ran
    assert gc.get_freeze_count() == 0 and gc.isenabled()  # handed back
    monkeypatch.setattr(_memory, "FREEZE", False)
    assert _figures(_run()) == frozen and seen[-1] == 0
    monkeypatch.setattr(_memory, "FREEZE", True)
    raising = []
    monkeypatch.setattr(live, "compare_step", lambda *a, **k: raising.append(gc.get_freeze_count()) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a failure of ours while frozen
        _run()
    assert raising[-1] > 10000 and gc.get_freeze_count() == 0
    monkeypatch.setattr(live, "compare_step", real)
    gc.freeze()  # the user froze objects of their own: left as they are
    try:
        calls = []
        monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
        monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
        _run()
        assert calls == [] and gc.get_freeze_count() > 10000
    finally:
        monkeypatch.undo()
        gc.unfreeze()


@pytest.mark.parametrize("elements", [40 << 10, 8 << 20])  # a small record (one read) and a large one (blocks)
def test_spilled_records_are_compared_from_their_file_without_mapping_their_pages(tmp_path, monkeypatch, elements):
    import tempfile

    from padiff.compare import metrics
    from padiff.options import Options

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rng = np.random.default_rng(1)
    b = rng.standard_normal(elements).astype(np.float32)
    a = b + rng.standard_normal(elements).astype(np.float32) * 1e-6
    tol = metrics.tolerance_for(Options(), "float32", "float32", stage="forward")
    with Spill(0, reuse=True) as spill:
        ka, kb = spill.keep(a, view=True), spill.keep(b, view=True)
        assert spill_module._map_of(ka) is not None and spill_module._map_of(kb) is not None
        in_memory = metrics.compare_arrays(a, b, tol)  # first: the code it runs is loaded
        before = _rss_file_mib()
        spilled = metrics.compare_arrays(ka, kb, tol)
        stats = [spill_module.read_blocks(ka, 1 << 16)]
        assert _rss_file_mib() < before + 1  # read through the file: no page of theirs mapped
        assert repr(spilled) == repr(in_memory) and spilled.passed
        assert (spilled.rel_l2, spilled.cosine, spilled.max_abs_index, spilled.value_a) == \
            (in_memory.rel_l2, in_memory.cosine, in_memory.max_abs_index, in_memory.value_a)
        np.testing.assert_array_equal(np.concatenate([x.copy() for x in stats[0]]), a)
        del ka, kb, stats
