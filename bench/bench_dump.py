"""Speed and memory of offline dumps, each against a bare baseline in the same process.

    python bench/bench_dump.py              # about 100 s on 2 CPU cores
    python bench/bench_dump.py --quick      # smaller models, for a smoke run

write    For each model (paddle and torch): the bytes ``padiff.dump`` writes divided by the time
         it adds to a bare forward + backward of the same model (dump time minus bare time, best
         of --repeat each), in MB/s, next to ``numpy.save`` of the same arrays (the dump's own,
         loaded back) into files of a fresh folder on the same filesystem, started as the dump
         starts (after removing the previous output and running the model once). Neither side
         syncs its arrays to disk (the dump syncs only its small manifest, counted against it).
         Target (issue 9): ratio = dump MB/s / np.save MB/s >= 1.0, i.e. writing a dump costs
         no more than writing its bytes (recording every layer's output and gradient counts
         against the dump). "writer" says who wrote: a worker thread (the framework leaves a
         core idle) or the model's own thread ("inline").
memory   Peak resident memory of one dump above the level once the model is built, next to a
         bare forward + backward (fresh processes): the dump holds no array, so what it adds
         is small against its bytes.
compare  ``compare_dumps`` of a paddle and a torch dump of the same encoder at two depths, in a
         fresh process: peak resident memory above the level once both dumps' manifests are
         loaded, against the largest compared pair (the largest array of each dump) and the
         whole of both dumps. Target: peak <= 4 x largest pair + 32 MB at every depth: the
         comparison holds one pair of arrays at a time, so its peak does not grow with the model.

The frameworks run on --threads threads (default 1): on a small shared machine several
threads make the bare runs, which the dump is measured against, vary by several times.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pairs import model_pair, reset_peak, status_kib

MB = 1e6
PAIR_FACTOR = 4.0  # compare target: peak <= PAIR_FACTOR x largest pair + FIXED_MB
FIXED_MB = 32.0


# --- models -----------------------------------------------------------------------------------------

def build(kind: str, quick: bool):
    """{framework: (model, inputs)} for one bundled model pair, same weights on both sides."""
    import paddle
    import torch

    paddle_model, torch_model, x = model_pair(kind, quick)
    return {"paddle": (paddle_model, {"x": paddle.to_tensor(x)}), "torch": (torch_model, {"x": torch.tensor(x)})}


def bare_step(model, inputs) -> None:
    model(**inputs).mean().backward()
    for p in model.parameters():
        if hasattr(p, "clear_gradient"):
            p.clear_gradient(False)
        else:
            p.grad = None


def dump_step(model, inputs, path) -> None:
    import padiff

    with contextlib.redirect_stdout(io.StringIO()):
        padiff.dump(model, inputs, path)


# --- files ------------------------------------------------------------------------------------------

def folder_files(path):
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs)


def folder_bytes(path) -> int:
    return sum(os.path.getsize(f) for f in folder_files(path))


def save_arrays(arrays, folder) -> None:
    """The baseline: numpy.save of each array into its own file, the dump's folder layout."""
    import numpy as np

    made = set()
    for rel, arr in arrays:
        full = os.path.join(folder, rel)
        d = os.path.dirname(full)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        np.save(full, arr, allow_pickle=False)


def timed(fn) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- /proc (Linux) ----------------------------------------------------------------------------------

def _status_mb(field: str) -> float:
    return status_kib(field) * 1024 / MB


# --- write throughput -------------------------------------------------------------------------------

def writer_mode(model) -> str:
    """How padiff.dump writes for this model: in a worker thread when the framework leaves a
    CPU core idle, else in the model's thread (padiff.dump's own rule)."""
    from padiff.compare.overlap import wants_overlap
    from padiff.frameworks import adapter_for

    return "worker" if wants_overlap(None, adapter_for(model, "model"), model) else "inline"


def measure_write(kind: str, fw: str, model, inputs, scratch: str, repeat: int) -> dict:
    import numpy as np

    where = os.path.join(scratch, f"{kind}_{fw}")
    bare_step(model, inputs)  # warm up both paths
    dump_step(model, inputs, where + "_warm")
    bare, dumped, saved = [], [], []
    for r in range(repeat):  # interleaved, so drift in the machine touches all three alike
        bare.append(timed(lambda: bare_step(model, inputs)))
        path = f"{where}_dump{r}"
        dumped.append(timed(lambda: dump_step(model, inputs, path)))
        if r == 0:
            files = folder_files(path)
            nbytes = sum(os.path.getsize(f) for f in files)
            arrays = [(os.path.relpath(f, path), np.load(f)) for f in files if f.endswith(".npy")]
            array_bytes = sum(os.path.getsize(os.path.join(path, rel)) for rel, _ in arrays)
        shutil.rmtree(path)
        bare_step(model, inputs)  # the save starts from where the dump started: files removed, a model run
        base = f"{where}_save{r}"
        saved.append(timed(lambda: save_arrays(arrays, base)))
        shutil.rmtree(base)
    shutil.rmtree(where + "_warm")
    bare_s, dump_s, save_s = min(bare), min(dumped), min(saved)
    dump_rate = nbytes / MB / max(dump_s - bare_s, 1e-9)
    save_rate = array_bytes / MB / save_s
    return {"writer": writer_mode(model), "bytes": nbytes, "files": len(files), "bare": bare_s, "dump": dump_s,
            "save": save_s,
            "dump_rate": dump_rate, "save_rate": save_rate, "ratio": dump_rate / save_rate}


# --- dump memory ------------------------------------------------------------------------------------

def dump_child(kind: str, fw: str, mode: str, path: str, quick: bool) -> None:
    """In a fresh process: peak memory of one bare run or one dump, above the level once the
    models are built."""
    pair = build(kind, quick)
    model, inputs = pair[fw]
    import padiff  # noqa: F401  (imported in both modes, so only the run itself differs)

    gc.collect()
    rest = _status_mb("VmRSS")
    reset_peak()
    if mode == "bare":
        bare_step(model, inputs)
    else:
        dump_step(model, inputs, path)
    print(json.dumps({"peak": _status_mb("VmHWM") - rest}))


def measure_dump_memory(kind: str, fw: str, scratch: str, args) -> dict:
    out = {}
    path = os.path.join(scratch, f"mem_{kind}_{fw}")
    for mode in ("bare", "dump"):
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--dump-child", kind, fw, mode, path]
        proc = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True, timeout=600)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"dump memory child failed for {kind}/{fw}/{mode}:\n{proc.stderr[-2000:]}")
        out[mode] = json.loads(lines[-1])["peak"]
    out["bytes"] = folder_bytes(path)
    shutil.rmtree(path)
    return out


# --- compare memory ---------------------------------------------------------------------------------

def largest_array(path) -> int:
    """Bytes of the largest array file of a dump."""
    return max(os.path.getsize(f) for f in folder_files(path) if f.endswith(".npy"))


def compare_child(a: str, b: str) -> None:
    """In a fresh process: peak memory of compare_dumps above the level once both manifests are
    loaded (padiff imported, neither framework)."""
    from padiff.dump import compare_dumps, load_dump

    da, db = load_dump(a), load_dump(b)
    gc.collect()
    rest = _status_mb("VmRSS")
    reset_peak()
    with contextlib.redirect_stdout(io.StringIO()):
        result = compare_dumps(da, db)
    peak = _status_mb("VmHWM") - rest
    print(json.dumps({"peak": peak, "rest": rest, "aligned": bool(result)}))


def measure_compare(a: str, b: str) -> dict:
    env = dict(os.environ, PADIFF_LOG_DIR=os.path.join(os.path.dirname(a), "log"))
    proc = subprocess.run([sys.executable, __file__, "--compare-child", a, b], capture_output=True, text=True,
                          timeout=600, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"compare child failed:\n{proc.stderr[-2000:]}")
    out = json.loads(lines[-1])
    if not out["aligned"]:
        raise SystemExit("the benchmark dumps do not compare as aligned")
    return out


# --- main -------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="framework threads (default 1)")
    ap.add_argument("--models", default="encoder6,convnet8", help="models for the write throughput")
    ap.add_argument("--depths", default="encoder6n,encoder24n", help="models for the compare memory")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary folder under /tmp)")
    ap.add_argument("--no-memory", action="store_true", help="skip the dump memory")
    ap.add_argument("--compare-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--dump-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compare_child:
        compare_child(*args.compare_child)
        return 0
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before paddle and torch are imported
    import torch

    torch.set_num_threads(args.threads)
    if args.dump_child:
        dump_child(*args.dump_child, quick=args.quick)
        return 0
    repeat = 2 if args.quick and args.repeat == 5 else args.repeat
    scratch = tempfile.mkdtemp(prefix="padiff-bench-dump-", dir=args.dir)
    try:
        if not args.no_write:
            print(f"write: padiff.dump vs numpy.save of the same arrays (MB/s over the time the dump adds to a "
                  f"bare forward+backward); {args.threads} framework thread(s), {os.cpu_count()} cores")
            print(f"{'model':<10} {'fw':<7} {'writer':<7} {'MB':>7} {'files':>6} {'bare s':>7} {'dump s':>7} "
                  f"{'dump MB/s':>10} {'save s':>7} {'save MB/s':>10} {'ratio':>6} {'target':>7}")
            for kind in args.models.split(","):
                pair = build(kind, args.quick)
                for fw in ("paddle", "torch"):
                    model, inputs = pair[fw]
                    w = measure_write(kind, fw, model, inputs, scratch, repeat)
                    print(f"{kind:<10} {fw:<7} {w['writer']:<7} {w['bytes'] / MB:7.1f} {w['files']:6d} "
                          f"{w['bare']:7.3f} {w['dump']:7.3f} {w['dump_rate']:10.0f} {w['save']:7.3f} "
                          f"{w['save_rate']:10.0f} {w['ratio']:6.2f} {'>=1.00':>7} "
                          f"{'met' if w['ratio'] >= 1.0 else 'NOT MET'}", flush=True)
                del pair
                gc.collect()
        if not args.no_memory:
            kind = args.models.split(",")[0]
            print(f"\nmemory: peak of padiff.dump above a bare forward+backward (fresh processes, above the built "
                  f"model)")
            print(f"{'model':<10} {'fw':<7} {'dump MB':>8} {'bare MB':>8} {'dump peak':>9} {'extra':>7} "
                  f"{'extra/dump':>10}")
            for fw in ("paddle", "torch"):
                m = measure_dump_memory(kind, fw, scratch, args)
                extra = m["dump"] - m["bare"]
                print(f"{kind:<10} {fw:<7} {m['bytes'] / MB:8.1f} {m['bare']:8.1f} {m['dump']:9.1f} {extra:7.1f} "
                      f"{extra / (m['bytes'] / MB):9.3f}x", flush=True)
        if not args.no_compare:
            print(f"\ncompare: compare_dumps(paddle dump, torch dump) peak memory (fresh process, above the "
                  f"loaded manifests); target <= {PAIR_FACTOR:g} x largest pair + {FIXED_MB:g} MB")
            print(f"{'model':<10} {'dumps MB':>9} {'pair MB':>8} {'peak MB':>8} {'peak/pair':>9} "
                  f"{'peak/dumps':>10} {'target MB':>9}")
            for kind in args.depths.split(","):
                pair = build(kind, args.quick)
                paths = {}
                for fw in ("paddle", "torch"):
                    paths[fw] = os.path.join(scratch, f"cmp_{kind}_{fw}")
                    dump_step(*pair[fw], paths[fw])
                del pair
                gc.collect()
                total = sum(folder_bytes(p) for p in paths.values()) / MB
                largest = sum(largest_array(p) for p in paths.values()) / MB
                m = measure_compare(paths["paddle"], paths["torch"])
                target = PAIR_FACTOR * largest + FIXED_MB
                print(f"{kind:<10} {total:9.1f} {largest:8.1f} {m['peak']:8.1f} {m['peak'] / largest:8.2f}x "
                      f"{m['peak'] / total:9.3f}x {target:9.1f} {'met' if m['peak'] <= target else 'NOT MET'}",
                      flush=True)
                for p in paths.values():
                    shutil.rmtree(p)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
