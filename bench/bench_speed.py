"""Speed and memory of auto_diff against a bare run of the same models in the same process.

    python bench/bench_speed.py              # all models, about 4 minutes on 2 CPU cores
    python bench/bench_speed.py --quick      # smaller inputs, for a smoke run

Models: llama2 (a tiny 2-layer HF LlamaModel against the paddleformers port: what is left
there is padiff's fixed cost per call), convnet8, encoder6, encoder24 (bench/pairs.py).
For each model pair it prints:
  time   auto_diff (forward + backward comparison of every layer and framework call) divided
         by a bare forward + backward of both models, best of --repeat runs each, the two
         alternated in one process (10x --repeat for the tiny llama2);
  fixed ms  auto_diff's time minus the bare run's, per call, in milliseconds;
  memory peak resident memory of the first run above the level once the models are built,
         divided by the same for a bare run (each in a fresh subprocess);
  growth resident memory after 10 repeated auto_diff calls minus after the first (MB), beside
         the same for 10 bare runs (the frameworks' allocators drift by a few MB on their own);
  overlap whether auto_diff compared in a worker thread while the tested model ran (it does
         when the tested model's framework leaves a CPU core idle: paddle on the CPU, any GPU).
Targets (issues 9, 18): time <= 1.15x (<= 2x on the tiny llama2), memory <= 1.3x, no growth.

    python bench/bench_speed.py --budgets 0,64,256,-1 --models encoder6
prints the same for several memory_budget_mb values (-1: None, no spill).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

from pairs import first_output, model_pair, reset_peak, status_kib


def build(kind: str, quick: bool):
    paddle_model, torch_model, x = model_pair(kind, quick)
    import paddle
    import torch

    key = "input_ids" if kind.startswith("llama") else "x"
    return paddle_model, torch_model, ({key: paddle.to_tensor(x)}, {key: torch.tensor(x)})


def loss(out):
    return first_output(out).mean()


def bare_step(paddle_model, torch_model, inputs):
    for model, inp in ((paddle_model, inputs[0]), (torch_model, inputs[1])):
        out = model(**inp)
        loss(out).backward()
    for model in (paddle_model, torch_model):
        for p in model.parameters():
            p.grad = None if hasattr(p, "requires_grad") else p.clear_gradient(False)


OPTIONS = {}


def padiff_step(paddle_model, torch_model, inputs, quiet=True):
    import contextlib
    import io

    from padiff import auto_diff

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        result = auto_diff(paddle_model, torch_model, inputs, loss_fn=[loss, loss], auto_weights=False,
                           options=OPTIONS)
    if not result:
        raise SystemExit("the benchmark pair is not aligned:\n" + sink.getvalue()[-2000:])
    return result


def interleaved(bare, full, repeat):
    """Best time of each of two runs, alternated ``repeat`` times in this process, so a
    neighbour's load on a shared machine weighs on both alike."""
    times = ([], [])
    for _ in range(repeat):
        for fn, kept in ((bare, times[0]), (full, times[1])):
            gc.collect()
            t = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - t)
    return min(times[0]), min(times[1])


def rss_mb() -> float:
    return status_kib("VmRSS") / 1024


def peak_mb() -> float:
    return status_kib("VmHWM") / 1024


def child(kind: str, mode: str, quick: bool) -> None:
    """Run in a fresh process: peak memory above the resting level for one kind of run."""
    paddle_model, torch_model, inputs = build(kind, quick)
    import padiff  # noqa: F401  (imported in both modes, so only the run itself differs)

    gc.collect()
    rest = rss_mb()  # models built, nothing run: the run's activations, gradients and copies count
    reset_peak()
    if mode == "bare":
        bare_step(paddle_model, torch_model, inputs)
    else:
        padiff_step(paddle_model, torch_model, inputs)
    peak = peak_mb() - rest
    step = padiff_step if mode == "padiff" else bare_step
    gc.collect()
    first = rss_mb()
    for _ in range(9):
        step(paddle_model, torch_model, inputs)
    gc.collect()
    growth = rss_mb() - first
    print(json.dumps({"peak": peak, "growth": growth}))


def measure_memory(kind: str, quick: bool, budget=None):
    out = {}
    for mode in ("bare", "padiff"):
        extra = ["--memory-budget", str(budget)] if budget is not None else []
        proc = subprocess.run([sys.executable, __file__, "--child", kind, mode] + (["--quick"] if quick else []) + extra,
                              capture_output=True, text=True, timeout=900)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"memory child failed for {kind}/{mode}:\n{proc.stderr[-2000:]}")
        out[mode] = json.loads(lines[-1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama2,convnet8,encoder6,encoder24")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-budget", type=float, default=None,
                    help="auto_diff's memory_budget_mb (records beyond it spill to disk); default: padiff's own")
    ap.add_argument("--budgets", default=None,
                    help="comma-separated memory_budget_mb values to compare (-1: None); default: padiff's own")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.memory_budget is not None:
            OPTIONS["memory_budget_mb"] = None if args.memory_budget < 0 else args.memory_budget
        child(args.child[0], args.child[1], args.quick)
        return 0
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else [args.memory_budget]
    print(f"{'model':<10} {'budget':>7} {'overlap':>7} {'bare s':>8} {'padiff s':>9} {'fixed ms':>9} {'time':>7} "
          f"{'target':>7}   "
          f"{'mem':>6} {'target':>7}   {'growth MB':>20}")
    for kind in args.models.split(","):
        tiny = kind.startswith("llama")
        paddle_model, torch_model, inputs = build(kind, args.quick)
        for budget in budgets:
            OPTIONS.clear()
            if budget is not None:
                OPTIONS["memory_budget_mb"] = None if budget < 0 else budget
            bare_step(paddle_model, torch_model, inputs)
            overlap = overlapped(padiff_step(paddle_model, torch_model, inputs))
            bare, full = interleaved(lambda: bare_step(paddle_model, torch_model, inputs),
                                     lambda: padiff_step(paddle_model, torch_model, inputs),
                                     args.repeat * (10 if tiny else 1))
            mem = "-"
            growth = "-"
            if not args.no_memory:
                m = measure_memory(kind, args.quick, budget)
                mem = f"{m['padiff']['peak'] / max(m['bare']['peak'], 1e-6):.2f}x"
                growth = f"{m['padiff']['growth']:+.1f} (bare {m['bare']['growth']:+.1f})"
            shown = "default" if budget is None else "None" if budget < 0 else f"{budget:g}"
            target = "2.00x" if tiny else "1.15x"
            print(f"{kind:<10} {shown:>7} {overlap:>7} {bare:8.3f} {full:9.3f} {(full - bare) * 1e3:9.1f} "
                  f"{full / bare:6.2f}x {target:>7}   "
                  f"{mem:>6} {'1.30x':>7}   {growth:>20}", flush=True)
        del paddle_model, torch_model, inputs
        gc.collect()
    return 0


def overlapped(result) -> str:
    """Whether that auto_diff compared while the tested model ran (as it decided by default)."""
    return "yes" if result.overlapped else "no"


if __name__ == "__main__":
    sys.exit(main())
