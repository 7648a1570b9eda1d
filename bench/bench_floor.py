"""What recording alone costs: the floor under auto_diff's time, whatever the comparison does.

    python bench/bench_floor.py                      # all models, about 3 minutes on 2 CPU cores
    python bench/bench_floor.py --models llama2 --repeat 20

auto_diff records every layer call's and every framework call's output and gradient of both
models. This bench does only that, with no comparison, no pairing, no report, no spill, in the
cheapest way we know, and times it against a bare forward and backward of the same two models
(alternated in one process, best of --repeat):

  hooks   a forward pre- and post-hook on every layer and a pass-through wrapper on every
          framework function padiff traces (the same list: padiff.record.api.api_targets),
          each doing nothing;
  grads   also a gradient hook on every floating output that requires one, doing nothing;
  copies  also a copy of every such output and gradient into memory that stays resident
          between steps (what padiff's arena does: no page faults after the first step).

If ``copies`` is over a time target, no design that records everything can meet it on this
machine: the target is blocked by the recording itself. The ``auto_diff`` column is the full
run with default options, for scale.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np

from bench_speed import bare_step, build, interleaved, padiff_step


class MinimalRecorder:
    """Hooks and wrappers on one model, each doing ``level``'s work (see the module doc)."""

    def __init__(self, model, level: str):
        from padiff.frameworks import adapter_for
        from padiff.record.api import ApiPatcher, api_targets

        self.ad = adapter_for(model)
        self.level = level
        self.handles = []
        self.kept = []  # resident copies, reused from one step to the next
        self.count = 0
        self.inside = False
        self.seen = {}  # id -> tensor recorded this step
        self.layers = []
        stack = [model]
        while stack:
            layer = stack.pop()
            self.layers.append(layer)
            stack.extend(child for _, child in self.ad.named_children(layer))
        self.patcher = ApiPatcher(api_targets(self.ad), self.on_call)

    def __enter__(self):
        for layer in self.layers:
            self.handles.extend(self.ad.add_forward_hooks(layer, self.pre, self.post))
        self.patcher.__enter__()
        return self

    def __exit__(self, *exc):
        self.patcher.__exit__(*exc)
        for h in self.handles:
            self.ad.remove_hook(h)
        self.handles = []
        self.count = 0
        self.seen.clear()

    def pre(self, *a):
        return None

    def post(self, layer, args, kwargs, output):
        self.took(output)
        return None

    def on_call(self, name, original, args, kwargs):
        if self.inside:  # a call made by a traced call is not recorded (as padiff does)
            return original(*args, **kwargs)
        self.inside = True
        try:
            out = original(*args, **kwargs)
        finally:
            self.inside = False
        self.took(out)
        return out

    def took(self, out):
        if self.level == "hooks" or not self.ad.is_tensor(out) or not self.ad.is_floating(out):
            return
        if self.seen.get(id(out)) is out:
            return  # a layer's output that its last call returned: recorded once (as padiff does)
        self.seen[id(out)] = out
        if self.level == "copies":
            self.copy(out)
        if self.ad.requires_grad(out):
            self.handles.append(self.ad.add_grad_hook(out, self.on_grad))

    def on_grad(self, grad):
        if self.level == "copies" and grad is not None:
            self.copy(grad)

    def copy(self, tensor):
        view = self.ad.host_view(tensor)
        if view is None:
            view = self.ad.to_numpy(tensor)
        i, self.count = self.count, self.count + 1
        if i < len(self.kept) and self.kept[i].shape == view.shape and self.kept[i].dtype == view.dtype:
            np.copyto(self.kept[i], view)
        elif i < len(self.kept):
            self.kept[i] = view.copy()
        else:
            self.kept.append(view.copy())


def recorded_step(recorders, paddle_model, torch_model, inputs):
    with recorders[0], recorders[1]:
        bare_step(paddle_model, torch_model, inputs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama2,convnet8,encoder6,encoder24")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    levels = ("hooks", "grads", "copies")
    print(f"{'model':<10} {'bare s':>8} " + " ".join(f"{lv:>8}" for lv in levels) + f" {'auto_diff':>10} "
          f"{'records MB':>11}")
    for kind in args.models.split(","):
        tiny = kind.startswith("llama")
        repeat = args.repeat * (10 if tiny else 1)
        paddle_model, torch_model, inputs = build(kind, False)
        bare = lambda: bare_step(paddle_model, torch_model, inputs)
        bare()
        ratios, base = [], None
        for level in levels:
            recs = [MinimalRecorder(paddle_model, level), MinimalRecorder(torch_model, level)]
            run = lambda: recorded_step(recs, paddle_model, torch_model, inputs)
            run()
            b, r = interleaved(bare, run, repeat)
            base = b if base is None else min(base, b)
            ratios.append(r / b)
            if level == "copies":
                size = sum(a.nbytes for rec in recs for a in rec.kept) / 2 ** 20
        padiff_step(paddle_model, torch_model, inputs)
        b, full = interleaved(bare, lambda: padiff_step(paddle_model, torch_model, inputs), repeat)
        print(f"{kind:<10} {base:8.3f} " + " ".join(f"{x:7.2f}x" for x in ratios) + f" {full / b:9.2f}x "
              f"{size:11.0f}", flush=True)
        del paddle_model, torch_model, inputs
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    sys.exit(main())
