"""False alarms and caught bugs of padiff's default tolerance, over many random seeds.

Every seed builds each clean model pair of ``bench/tolerance_models.py`` (new random weights
and inputs; padiff copies the weights), runs ``auto_diff`` at default settings (forward,
backward, parameter gradients; weights after the optimizer steps where the pair trains) and
counts a false alarm when it reports a difference. The same pairs with one injected porting
bug must fail, at the stage and layer where the bug is.

    python bench/bench_tolerance.py               # 100 seeds
    python bench/bench_tolerance.py --seeds 10
    python bench/bench_tolerance.py --atol 1e-4 --rtol 1e-4   # a fixed tolerance, for comparison

Prints, per clean pair, false alarms / seeds, the worst use of the tolerance over all its
comparisons (1.0 = at the limit) and the runs where a near-tie flip was tolerated; per bug,
caught / seeds, named at the right layer / seeds, and the weakest evidence: over the seeds, the
smallest of the largest tolerance use in the run (how far above the limit the mildest instance
of the bug went). "Named" is where padiff points: the first difference, or, where the chosen
tolerance let the start of the divergence through and a later check failed, the likely origin
(the pair run with ``atol=rtol=1e-4``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import sys
import tempfile
import time

# One thread: the machine is shared, and torch's intra-op threads only add contention here.
os.environ.setdefault("OMP_NUM_THREADS", "1")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import torch  # noqa: E402

torch.set_num_threads(1)

import tolerance_models as tm  # noqa: E402
from padiff import auto_diff  # noqa: E402


def tolerance_use(diff) -> float:
    """How much of its tolerance a comparison used (above 1.0 it fails), by the criterion that
    bound (``TensorDiff.tolerance_use``: elementwise, relative L2, or the rounding floor where
    the floor allowed more, as for noise-sized gradients)."""
    return diff.tolerance_use()[0]


OPTIONS = {}  # log_dir, and --atol/--rtol: the same runs with a fixed tolerance


def run(case):
    with contextlib.redirect_stdout(io.StringIO()):
        return auto_diff(*case.models, case.inputs, options=dict(OPTIONS), **case.kwargs)


def findings(result):
    for step in result.steps:
        yield from step.all_findings()


def bench_clean(name, seeds):
    alarms, flips, worst, where = 0, 0, 0.0, []
    for seed in seeds:
        result = run(tm.PAIRS[name](seed))
        if not result:
            alarms += 1
            f = result.first
            where.append(f"seed {seed}: {f.stage} {f.ref_path} {f.what}")
        if any(f.diff.flips for f in findings(result)):
            flips += 1
        worst = max([worst] + [tolerance_use(f.diff) for f in findings(result) if f.passed])
    return alarms, flips, worst, where


def bench_bug(bug, seeds):
    caught, named, mildest, wrong = 0, 0, math.inf, []
    for seed in seeds:
        result = run(tm.PAIRS[bug.pair](seed, bug.bug))
        if result:
            wrong.append(f"seed {seed}: not caught")
            continue
        caught += 1
        f, paths = tm.pointed_at(result)
        path = paths[0]
        if f.stage == bug.stage and (not bug.layer or bug.layer in paths):
            named += 1
        else:
            wrong.append(f"seed {seed}: {f.stage} {path} {f.what}")
        mildest = min(mildest, max(tolerance_use(g.diff) for g in findings(result)))
    return caught, named, mildest, wrong


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="random seeds per pair and per bug (default 100)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=None, help="a fixed atol instead of the default rule")
    parser.add_argument("--rtol", type=float, default=None, help="a fixed rtol instead of the default rule")
    args = parser.parse_args(argv)
    OPTIONS.clear()
    OPTIONS.update({k: v for k, v in (("atol", args.atol), ("rtol", args.rtol)) if v is not None})
    log_dir = tempfile.mkdtemp(prefix="padiff_bench_")  # the failure logs of every caught bug
    try:
        return _bench(range(args.first_seed, args.first_seed + args.seeds), log_dir)
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def _bench(seeds, log_dir) -> int:
    n = len(seeds)
    started = time.monotonic()
    rule = ", ".join(f"{k}={v:g}" for k, v in OPTIONS.items()) or "padiff default tolerance"
    OPTIONS["log_dir"] = log_dir
    print(f"{rule}, {n} seeds each, float32 on CPU")
    print()
    print(f"{'clean pair':44s} {'false alarms':>12s} {'worst use':>10s} {'flip runs':>10s}")
    total_alarms = 0
    for name in tm.CLEAN:
        alarms, flips, worst, where = bench_clean(name, seeds)
        total_alarms += alarms
        print(f"{name:44s} {alarms:>5d} / {n:<4d} {worst:>10.3f} {flips:>6d} / {n}")
        for line in where[:3]:
            print(f"    {line}")
    print()
    print(f"{'injected bug':44s} {'caught':>12s} {'named right':>12s} {'weakest use':>12s}")
    total_missed = 0
    for bug in tm.BUGS:
        caught, named, mildest, wrong = bench_bug(bug, seeds)
        total_missed += n - named
        print(f"{bug.name:44s} {caught:>5d} / {n:<4d} {named:>5d} / {n:<4d} {mildest:>12.3g}")
        for line in wrong[:3]:
            print(f"    {line}")
    print()
    runs = n * (len(tm.CLEAN) + len(tm.BUGS))
    print(f"false alarms: {total_alarms} in {n * len(tm.CLEAN)} clean runs; bugs missed or misplaced: "
          f"{total_missed} in {n * len(tm.BUGS)} runs ({runs} runs, {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
