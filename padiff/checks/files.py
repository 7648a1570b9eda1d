"""``padiff compare FILE FILE``: two files of arrays saved with numpy."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import Optional, Sequence

import numpy as np

from ..errors import PadiffError
from .values import compare


def load_saved(path: str):
    """Arrays saved with numpy: a ``.npy`` array, a ``.npz`` archive (a dict of its arrays) or a
    reprod_log ``.npy`` file holding a pickled dict. Pickles run code when loaded: load only
    files you trust."""
    if not os.path.isfile(path):
        raise PadiffError(f"No such file: {path}. Pass two files saved with numpy (.npy, .npz, or reprod_log .npy).")
    try:
        data = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise PadiffError(f"Cannot read {path} as a numpy file (.npy or .npz): {exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {k: data[k] for k in data.files}
    if data.dtype == object and data.shape == ():
        return data.item()
    return data


def main_compare(argv: Optional[Sequence[str]] = None) -> int:
    """``padiff compare FIRST SECOND [--atol X] [--rtol X] [--compare-mode M] [--name N]
    [--log-dir DIR] [--quiet]``: 0 when the files agree, 1 when they differ, 2 when they cannot
    be read (or the options are wrong). SECOND is the reference."""
    parser = argparse.ArgumentParser(
        prog="padiff compare",
        description="Compare two files of saved arrays (.npy, .npz, reprod_log .npy dicts) with padiff's "
                    "tolerances. The second file is the reference.")
    parser.add_argument("first", help="file under test (e.g. forward_paddle.npy)")
    parser.add_argument("second", help="reference file (e.g. forward_torch.npy)")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: auto, per dtype)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: auto, per dtype)")
    parser.add_argument("--compare-mode", default=None, help="auto (default), strict, mean or abs_mean")
    parser.add_argument("--name", default="value", help="root name of the id paths (default: value)")
    parser.add_argument("--log-dir", default=None, help="folder of the report file (default: padiff_log)")
    parser.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in (("atol", args.atol), ("rtol", args.rtol), ("compare_mode", args.compare_mode),
                                ("log_dir", args.log_dir)) if v is not None}
    try:
        first, second = load_saved(args.first), load_saved(args.second)
        result = compare(first, second, name=args.name, quiet=args.quiet, **kwargs)
    except PadiffError as exc:
        print(f"padiff compare: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.passed else 1
