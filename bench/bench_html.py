"""How long the HTML report and the metric tables take for a deep model, and how big they are.

    python bench/bench_html.py [--pairs 250] [--repeat 5]

Builds a torch/paddle pair of ``pairs`` x (Linear + ReLU) layers (500 layers by default),
runs auto_diff once, then writes the HTML report and the CSV/JSON tables ``repeat`` times
and prints the best and median times (the first write, which compiles the templates, is
reported on its own).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=250, help="Linear+ReLU pairs (layers = 2 x pairs)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    import paddle
    import torch

    import padiff
    from padiff.report.html import write_html
    from padiff.report.tables import write_tables

    n = args.pairs
    tm = torch.nn.Sequential(*[m for _ in range(n) for m in (torch.nn.Linear(4, 4), torch.nn.ReLU())])
    pm = paddle.nn.Sequential(*[m for _ in range(n) for m in (paddle.nn.Linear(4, 4), paddle.nn.ReLU())])
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    out = tempfile.mkdtemp(prefix="padiff-bench-html-")
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = padiff.auto_diff(tm, pm, (torch.tensor(x), paddle.to_tensor(x)), auto_weights=True,
                                  options={"log_dir": out})
    run_s = time.perf_counter() - started
    sr = result.steps[0]
    print(f"model: {2 * n} layers; auto_diff {run_s:.2f} s; {len(sr.forward)} forward and "
          f"{len(sr.backward)} backward comparisons, {len(sr.ref_trace.nodes)} recorded calls")

    html_path = os.path.join(out, "padiff_report.html")
    t = time.perf_counter()
    write_html(result, html_path)
    print(f"first HTML write (compiles templates): {1000 * (time.perf_counter() - t):.0f} ms")
    html_t, table_t = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        write_html(result, html_path)
        html_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        csv_path, json_path = write_tables(result, out)
        table_t.append(time.perf_counter() - t)
    for label, ts, paths in (("HTML", html_t, [html_path]), ("CSV+JSON", table_t, [csv_path, json_path])):
        size = sum(os.path.getsize(p) for p in paths)
        print(f"{label:9s} best {1000 * min(ts):6.0f} ms, median {1000 * statistics.median(ts):6.0f} ms, "
              f"{size / 1024:7.0f} KiB")
    print(f"files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
