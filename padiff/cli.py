"""The ``padiff`` command: ``padiff compare``, ``padiff report``, ``padiff checkpoints``,
``padiff convert``. Each has ``--help``. The exit status gates a CI job: 0 when aligned, 1 when
not, 2 for a usage mistake or an input padiff cannot use (the message says which).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import __doc__ as package_doc
from .errors import PadiffError
from .frameworks import known_frameworks

PROG = "padiff"
# The package docstring's first line ("padiff: prove that a model ported between ..."); -OO strips it.
TAGLINE = (package_doc or PROG).strip().splitlines()[0]


def _by_rank():
    """The known frameworks' names tables, the reference (highest ``reference_rank``) first."""
    return sorted(known_frameworks(), key=lambda fw: -fw.reference_rank)


def _error(command: str, exc: Exception) -> int:
    print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
    return 2


def _parser(command: str, *, description: str, epilog: str = "") -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"{PROG} {command}", description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# --- padiff compare ---------------------------------------------------------------------------------

_ARRAY_FILES = (".npy", ".npz")


def _is_array_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(_ARRAY_FILES)


def compare_main(argv: Sequence[str]) -> int:
    args = _compare_parser().parse_args(argv)
    if _is_array_file(args.first) and _is_array_file(args.second):
        from .checks.files import main_compare

        return main_compare(list(argv))
    try:
        kwargs = _compare_kwargs(args)
    except PadiffError as exc:
        return _error("compare", exc)
    for path in (args.first, args.second):
        if os.path.isfile(path):
            return _error("compare", PadiffError(
                f"`{path}` is a file: padiff compare takes two dump folders (made by padiff.dump), or two array "
                "files (.npy/.npz)."))
    try:
        result = _compare_dumps(args, kwargs)
    except PadiffError as exc:
        return _error("compare", exc)
    return 0 if result.passed else 1


def _compare_parser() -> argparse.ArgumentParser:
    ranked = [fw.name for fw in _by_rank()]
    parser = _parser(
        "compare",
        description="Compare two dumps made by padiff.dump (one per model, made in separate processes) layer by "
        f"layer, with auto_diff's pairing, tolerances and report. The {ranked[0]} dump is the reference when the "
        f"frameworks differ, else the first. Neither {' nor '.join(ranked)} is imported.\n\n"
        "Given two array files (.npy, .npz, reprod_log .npy dicts) instead, compares them as padiff.compare does; "
        "then the SECOND file is the reference (see `padiff compare FILE FILE --help`).",
        epilog="exit status: 0 aligned, 1 not aligned, 2 usage error or unusable input (missing or interrupted "
        f"dump).\nexample: padiff compare run_{ranked[-1]}/ run_{ranked[0]}/ --atol 1e-5 --html report.html")
    parser.add_argument("first", help="a dump folder (or an array file)")
    parser.add_argument("second", help="the other dump folder (or array file)")
    parser.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: auto, per dtype)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: auto, per dtype)")
    parser.add_argument("--compare-mode", choices=("auto", "strict", "mean", "abs_mean"), default=None,
                        help="every element by the rounding-aware rule, your atol/rtol accepted on top (auto, the default); every element within exactly your atol/rtol (strict); or the tensors' means")
    parser.add_argument("--diff-phase", choices=("forward", "backward", "both"), default=None,
                        help="what to compare (default: what both dumps recorded)")
    parser.add_argument("--steps", type=int, default=None, help="compare only the first N training steps")
    parser.add_argument("--no-api", action="store_true",
                        help="compare layers only, leaving out the recorded framework (API) calls")
    parser.add_argument("--skip-wrap-layer", action="store_true",
                        help="leave out layers without weights of their own when pairing (PADIFF_SKIP_WRAP_LAYER)")
    parser.add_argument("--path-log", action="store_true", help="print dotted paths in the model trees")
    parser.add_argument("--log-dir", default=None, help="folder of the log files (default: padiff_log)")
    parser.add_argument("--html", metavar="PATH", default=None,
                        help="also write the HTML report to PATH (a file, or a folder for padiff_report.html)")
    parser.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    dist = parser.add_argument_group("distributed dumps (a folder of rank<k> dumps)")
    dist.add_argument("--jobs", type=int, default=1, metavar="N",
                      help="compare pairs of ranks in N worker processes, one pair each at a time (default: 1)")
    dist.add_argument("--rank", default=None, metavar="R",
                      help="the rank a single-process dump is compared with (default: 0), or 'all'")
    dist.add_argument("--tp-layout", action="append", default=[], metavar="PATH=LAYOUT",
                      help="declare a layer's tensor-parallel layout (column, row, vocab or none); repeatable")
    parser.add_argument("--name", default=None, help=argparse.SUPPRESS)  # array files only
    return parser


def _compare_kwargs(args) -> dict:
    """compare_dumps' keywords from the parsed command line."""
    kwargs = {k: v for k, v in (("atol", args.atol), ("rtol", args.rtol), ("compare_mode", args.compare_mode),
                                ("diff_phase", args.diff_phase), ("steps", args.steps), ("log_dir", args.log_dir))
              if v is not None}
    if args.no_api:
        kwargs["api_check"] = False
    if args.skip_wrap_layer:
        kwargs["skip_wrap_layer"] = True
    if args.path_log:
        kwargs["path_log"] = True
    kwargs.update(_distributed_args(args))
    return kwargs


def _compare_dumps(args, kwargs: dict):
    """Compare the two dump folders (quietly with --quiet) and write the HTML report asked for."""
    from .dump import compare_dumps
    from .dump.distributed import is_distributed

    ranked = is_distributed(args.first) or is_distributed(args.second)
    if args.html and ranked:  # one HTML report per pair of ranks, in each pair's log folder
        kwargs["report"] = "html"
    with (contextlib.redirect_stdout(io.StringIO()) if args.quiet else contextlib.nullcontext()):
        result = compare_dumps(args.first, args.second, **kwargs)
    if args.html and not ranked:
        try:
            from .report.html import write_html
        except ImportError:
            print(f"{PROG} compare: the HTML report is not available in this padiff; --html was ignored.",
                  file=sys.stderr)
        else:
            written = write_html(result, args.html)
            if not args.quiet:
                print(f"[AutoDiff] HTML report: `{written}`")
    return result


def _distributed_args(args) -> dict:
    """compare_dumps' keywords for distributed dumps, from --jobs, --rank, --tp-layout."""
    out = {}
    if args.jobs != 1:
        out["jobs"] = args.jobs
    if args.rank is not None:
        if args.rank != "all" and not args.rank.isdigit():
            raise PadiffError(f"--rank takes a rank number or 'all', got {args.rank!r}.")
        out["rank"] = args.rank if args.rank == "all" else int(args.rank)
    if args.tp_layout:
        layout = {}
        for item in args.tp_layout:
            path, sep, kind = item.partition("=")
            if not sep or not path or not kind:
                raise PadiffError(f"--tp-layout takes PATH=LAYOUT (mlp.up=column), got {item!r}.")
            layout[path] = kind
        out["tp_layout"] = layout
    return out


# --- padiff report ----------------------------------------------------------------------------------

def report_main(argv: Sequence[str]) -> int:
    from .reprod import DEFAULT_DIFF_THRESHOLD, METHODS, ReprodDiffHelper

    parser = _parser(
        "report",
        description="Compare two reprod_log files (saved by ReprodLogger.save) key by key, as ReprodDiffHelper "
        "does, print the report and write it to the log file. The FIRST file is the reference, as the "
        "reproduction guide passes them.",
        epilog="exit status: 0 every key passed, 1 a key failed or is missing, 2 usage error or unreadable file.\n"
        "example: padiff report forward_torch.npy forward_paddle.npy --log forward_diff.log")
    parser.add_argument("reference", help="the reference file, e.g. forward_torch.npy")
    parser.add_argument("other", help="the file to check, e.g. forward_paddle.npy")
    parser.add_argument("--method", default="mean", choices=METHODS + ("all",),
                        help="statistic of the absolute difference to judge (default: mean)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_DIFF_THRESHOLD,
                        help=f"absolute threshold (default: {DEFAULT_DIFF_THRESHOLD:g})")
    parser.add_argument("--rel-threshold", type=float, default=None,
                        help="relative threshold, added as rel * |reference| (default: none)")
    parser.add_argument("--log", default="./diff.txt", help="file to write the report to (default: ./diff.txt)")
    parser.add_argument("--no-log", action="store_true", help="only print the report, write no file")
    args = parser.parse_args(argv)
    try:
        helper = ReprodDiffHelper()
        ref = helper.load_info(args.reference)
        other = helper.load_info(args.other)
        helper.compare_info(ref, other)
        passed = helper.report(diff_method=args.method, diff_threshold=args.threshold,
                               path=None if args.no_log else args.log, rel_threshold=args.rel_threshold)
    except PadiffError as exc:
        return _error("report", exc)
    return 0 if passed else 1


# --- padiff checkpoints -----------------------------------------------------------------------------

def checkpoints_main(argv: Sequence[str]) -> int:
    from .reprod import CHECKPOINTS, check_checkpoints

    names = ", ".join(c for c, _ in CHECKPOINTS)
    parser = _parser(
        "checkpoints",
        description="Check the reproduction guide's acceptance checkpoints in a folder: for each of "
        f"{names}, NAME_paddle.npy against NAME_torch.npy (or NAME_pytorch.npy, NAME_ref.npy; "
        "train_align_benchmark.npy first for train_align). Writes NAME_diff.log for each pair and prints a "
        "summary.",
        epilog="exit status: 0 all five present and passed, 1 one failed or is missing, 2 usage error.\n"
        "example: padiff checkpoints result/ --out result/log")
    parser.add_argument("folder", help="the folder holding the file pairs")
    parser.add_argument("--out", default=None, help="folder for the NAME_diff.log files (default: FOLDER)")
    parser.add_argument("--method", default="mean", help="statistic to judge (default: mean)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="absolute threshold for every checkpoint (default: 1e-6, train_align 0.0015)")
    parser.add_argument("--rel-threshold", type=float, default=None, help="relative threshold (default: none)")
    args = parser.parse_args(argv)
    try:
        summary = check_checkpoints(args.folder, out_dir=args.out, diff_threshold=args.threshold,
                                    rel_threshold=args.rel_threshold, diff_method=args.method)
    except PadiffError as exc:
        return _error("checkpoints", exc)
    return 0 if summary.passed else 1


# --- padiff convert ---------------------------------------------------------------------------------

def convert_main(argv: Sequence[str]) -> int:
    from .convert_cli import main

    return main(list(argv))


# --- the command ------------------------------------------------------------------------------------

COMMANDS: Dict[str, Tuple[Callable[[Sequence[str]], int], str]] = {
    "compare": (compare_main, "compare two dumps (padiff.dump) layer by layer, or two array files"),
    "report": (report_main, "compare two reprod_log files, as ReprodDiffHelper.report"),
    "checkpoints": (checkpoints_main, "check the reproduction guide's five acceptance checkpoints in a folder"),
    "convert": (convert_main, f"convert a checkpoint between {' and '.join(fw.name for fw in _by_rank())} "
                              "(.safetensors, .pth, .pdparams)"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"usage: {PROG} COMMAND [options] ...", "",
             TAGLINE, "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", f"`{PROG} COMMAND --help` describes a command. Exit status: 0 aligned, 1 not aligned, "
                  "2 usage error."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``padiff`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean `{PROG} {close[0]}`?" if close else ""
        print(f"{PROG}: error: unknown command {name!r}.{hint} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][0](rest)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
