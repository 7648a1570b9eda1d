"""Peak memory of a checkpoint conversion, against the largest tensor.

    python bench/bench_convert.py            # a 1.07 GB checkpoint: 16 Linears 4096x4096, float32 (~1 min)
    python bench/bench_convert.py --quick    # 4 Linears 1024x1024, for a smoke run

The bench writes its own torch checkpoint (``.safetensors``, one Linear after another, never
more than one tensor in memory), then converts it in fresh processes, each time measuring the
peak resident memory (VmHWM, reset once the frameworks are imported and the models built)
above the level before ``convert_checkpoint`` starts, divided by the largest tensor's bytes:

torch -> paddle     the torch checkpoint into paddle's layout, ``.safetensors`` in shards of
                    512 MB; models built without values (``torch.device("meta")``,
                    ``paddle.LazyGuard()``), so the process holds no weights but the ones
                    being converted.
paddle -> torch     the result back into torch's layout: the plan run backwards (index arrays
                    pushed through each link's transform, then a gather), same models.
weights built       torch -> paddle again with both models built with their (random) weights:
                    the models take 2x the checkpoint before the conversion starts; the
                    figure is what the conversion adds to that.
.pdparams           torch -> paddle into one ``.pdparams`` (``paddle.save`` writes one
                    pickle, so the whole converted state is in memory): for contrast.

Target (issue 21): the streamed conversions stay within a few times the largest tensor,
whatever the checkpoint's size. Every result is checked: one converted tensor is compared
with the source's transpose.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pairs import reset_peak, status_kib

MB = 1e6


def build_models(n: int, d: int, values: bool):
    import paddle
    import torch

    def torch_net():
        return torch.nn.Sequential(*[torch.nn.Linear(d, d) for _ in range(n)])

    def paddle_net():
        return paddle.nn.Sequential(*[paddle.nn.Linear(d, d) for _ in range(n)])

    if values:
        return paddle_net(), torch_net()
    with torch.device("meta"):
        t = torch_net()
    with paddle.LazyGuard():
        p = paddle_net()
    return p, t


def write_checkpoint(path: str, n: int, d: int) -> int:
    """A torch checkpoint of n Linears d x d (float32), written one tensor at a time."""
    import numpy as np

    from padiff.weights.checkpoint import SafetensorsWriter, TensorInfo

    entries = []
    for i in range(n):
        entries += [TensorInfo(f"{i}.weight", (d, d), "float32"), TensorInfo(f"{i}.bias", (d,), "float32")]
    writer = SafetensorsWriter(path, entries, {"format": "pt"})
    for i in range(n):
        rng = np.random.default_rng(i)
        writer.write(f"{i}.weight", rng.standard_normal((d, d), dtype=np.float32))
        writer.write(f"{i}.bias", rng.standard_normal(d, dtype=np.float32))
    writer.close()
    return sum(e.nbytes for e in entries)


def child(args) -> None:
    """One conversion in this (fresh) process; prints a JSON line."""
    import numpy as np

    import padiff
    from padiff.weights.checkpoint import open_checkpoint

    p, t = build_models(args.n, args.d, args.values)
    base = status_kib("VmRSS")
    reset_peak()
    start = time.perf_counter()
    import io

    table = padiff.convert_checkpoint(args.src, args.dst, paddle_model=p, torch_model=t,
                                      max_shard_size="512MB" if args.dst.endswith(".safetensors") else None,
                                      stream=io.StringIO())
    took = time.perf_counter() - start
    peak = status_kib("VmHWM")
    with open_checkpoint(args.src) as src, open_checkpoint(table.files[-1], framework=table.dst_framework) as out:
        ok = bool(table) and np.array_equal(out.array("1.weight"), src.array("1.weight").T)
    print(json.dumps({"extra_mb": (peak - base) * 1024 / MB, "base_mb": base * 1024 / MB, "seconds": took,
                      "ok": ok, "files": len(table.files)}))


def run(mode, src, dst, n, d, values):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--src", src, "--dst", dst, "--n", str(n),
           "--d", str(d)] + (["--values"] if values else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the files in the temporary folder")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--d", type=int, default=4096, help=argparse.SUPPRESS)
    ap.add_argument("--values", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    n, d = (4, 1024) if args.quick else (args.n, args.d)
    folder = tempfile.mkdtemp(prefix="padiff_bench_convert_")
    try:
        src = os.path.join(folder, "torch.safetensors")
        start = time.perf_counter()
        total = write_checkpoint(src, n, d)
        largest = d * d * 4
        print(f"checkpoint: {n} Linears {d}x{d} float32, {total / MB:.0f} MB, largest tensor {largest / MB:.1f} MB "
              f"(written in {time.perf_counter() - start:.1f} s)")
        cases = [("torch -> paddle", src, os.path.join(folder, "paddle", "model.safetensors"), False),
                 ("paddle -> torch", os.path.join(folder, "paddle"),
                  os.path.join(folder, "back", "model.safetensors"), False),
                 ("weights built", src, os.path.join(folder, "paddle2", "model.safetensors"), True),
                 (".pdparams", src, os.path.join(folder, "model.pdparams"), False)]
        print(f"{'conversion':<16} {'peak above start':>17} {'x largest':>10} {'seconds':>8} {'MB/s':>6}  files  check")
        for mode, s, dst, values in cases:
            r = run(mode, s, dst, n, d, values)
            ratio = r["extra_mb"] * MB / largest
            print(f"{mode:<16} {r['extra_mb']:>14.0f} MB {ratio:>10.2f} {r['seconds']:>8.1f} "
                  f"{total / MB / r['seconds']:>6.0f}  {r['files']:>5}  {'ok' if r['ok'] else 'WRONG'}"
                  + (f"   (resident before: {r['base_mb']:.0f} MB)" if values else ""))
    finally:
        if args.keep:
            print(f"files kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
