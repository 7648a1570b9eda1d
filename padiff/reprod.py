"""A drop-in replacement for ``reprod_log``, the tool of the paper-reproduction guide.

The guide's workflow saves named arrays from each framework with ``ReprodLogger`` and
compares the two files with ``ReprodDiffHelper``::

    from padiff import ReprodLogger, ReprodDiffHelper

    logger = ReprodLogger()
    logger.add("logits", paddle_out.numpy())
    logger.save("./result/forward_paddle.npy")
    ...
    helper = ReprodDiffHelper()
    torch_info = helper.load_info("./result/forward_torch.npy")
    paddle_info = helper.load_info("./result/forward_paddle.npy")
    helper.compare_info(torch_info, paddle_info)
    passed = helper.report(path="./result/log/forward_diff.log")

The files are the guide's: a ``.npy`` file holding one pickled ``dict`` of named arrays
(``np.load(path, allow_pickle=True).tolist()`` reads it back). The report keeps the guide's
lines, so logs made here read like the ones in the guide::

    [2021/12/21 15:00:38] padiff.reprod INFO: logits: 
    [2021/12/21 15:00:38] padiff.reprod INFO:     mean diff: check passed: False, value: 2.3e-06
    [2021/12/21 15:00:38] padiff.reprod INFO: diff check failed

The first argument of ``compare_info`` is the reference (the guide passes the PyTorch
result first); relative thresholds and the ``rel_*`` methods measure against its magnitude.

``check_checkpoints(folder)`` runs the five acceptance checks of the guide
(forward, metric, loss, bp_align, train_align) on a folder of file pairs and returns a
summary. This module depends on numpy only.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from padiff.errors import PadiffError

__all__ = [
    "ReprodLogger",
    "ReprodDiffHelper",
    "DiffReport",
    "KeyResult",
    "MethodResult",
    "CheckpointResult",
    "CheckpointSummary",
    "check_checkpoints",
    "render_report",
    "render_checkpoint_summary",
    "DEFAULT_DIFF_THRESHOLD",
    "CHECKPOINTS",
]

LOGGER_NAME = "padiff.reprod"
LOG_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
LOG_DATEFMT = "%Y/%m/%d %H:%M:%S"
INDENT = "    "

#: reprod_log's default: the mean absolute difference must not exceed 1e-6.
DEFAULT_DIFF_THRESHOLD = 1e-6

#: The methods ``report`` accepts in ``diff_method`` ("all" means min, max and mean).
METHODS = ("mean", "max", "min", "rel_mean", "rel_max", "allclose")

#: The guide's acceptance checkpoints with their default absolute thresholds. The guide's
#: train_align check compares a final metric with the benchmark's and accepts a difference
#: of 0.15% (ImageNet top-1 accuracy as a fraction: 0.0015); all others use 1e-6.
CHECKPOINTS: Tuple[Tuple[str, float], ...] = (
    ("forward", 1e-6),
    ("metric", 1e-6),
    ("loss", 1e-6),
    ("bp_align", 1e-6),
    ("train_align", 0.0015),
)

# Reference file suffixes, in order of preference, per checkpoint.
_REFERENCE_SUFFIXES = ("torch", "pytorch", "ref")
_TRAIN_ALIGN_REFERENCE_SUFFIXES = ("benchmark", "torch", "pytorch", "ref")

_CONVERT_HINT = (
    "convert it to a numpy array first: torch: tensor.detach().cpu().numpy(); "
    "paddle: tensor.numpy()"
)


# --------------------------------------------------------------------------- saving


class ReprodLogger:
    """Collects named numpy arrays and saves them in reprod_log's file format."""

    def __init__(self) -> None:
        self.data: Dict[Any, np.ndarray] = {}

    def add(self, key: Any, val: Any) -> None:
        """Record ``val`` (a numpy array, numpy scalar, number or list) under ``key``.

        The value is copied, so changing the array afterwards does not change the record.
        Adding an existing key replaces its value.
        """
        self.data[key] = _to_saved_array(key, val)

    def remove(self, key: Any) -> None:
        """Forget ``key``; a key that was never added is a PadiffError."""
        if key not in self.data:
            raise PadiffError(
                f"ReprodLogger.remove: key {key!r} was never added; "
                f"the keys are {sorted(map(str, self.data))}."
            )
        del self.data[key]

    def clear(self) -> None:
        """Forget all keys."""
        self.data.clear()

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Save the dict of arrays to ``path`` with ``np.save`` (parent folders are created).

        As with ``np.save``, ``.npy`` is appended when ``path`` does not end with it.
        """
        path = os.fspath(path)
        try:
            _make_parent(path)
            np.save(path, self.data, allow_pickle=True)
        except OSError as err:
            raise PadiffError(
                f"ReprodLogger.save could not write '{path}': {_reason(err)}. "
                "Pass a path in a folder you can write to."
            ) from err


def _to_saved_array(key: Any, val: Any) -> np.ndarray:
    if isinstance(val, np.ndarray):
        return np.array(val, copy=True)
    if isinstance(val, (np.generic, numbers.Number, list, tuple)):
        try:
            return np.array(val)
        except (ValueError, TypeError) as err:
            raise PadiffError(
                f"ReprodLogger.add: the value for {key!r} cannot become a numpy array "
                f"({err}); pass a numpy array."
            ) from err
    raise PadiffError(
        f"ReprodLogger.add: the value for {key!r} is a {type(val).__module__}."
        f"{type(val).__qualname__}, not a numpy array; {_CONVERT_HINT}."
    )


# --------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class _KeyDiff:
    """How the values of one key compare; computed once by ``compare_info``."""

    key: str
    status: str  # "compared", "missing", "shape_mismatch", "type_mismatch", "not_numeric"
    missing_in: Optional[str] = None
    shapes: Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]] = None
    kinds: Optional[Tuple[str, str]] = None
    equal: bool = False
    stats: Mapping[str, float] = field(default_factory=dict)
    abs_diff: Optional[np.ndarray] = field(default=None, repr=False)
    ref_abs: Optional[np.ndarray] = field(default=None, repr=False)


def _flatten(info: Mapping, prefix: str, out: Dict[str, Any], side: str) -> Dict[str, Any]:
    for k, v in info.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            _flatten(v, name + ".", out, side)
            continue
        if name in out:
            raise PadiffError(
                f"two entries of {side} are both named '{name}' once nested keys are "
                "joined with '.'; rename one of them."
            )
        out[name] = v
    return out


def _kind(v: Any) -> str:
    if isinstance(v, Mapping):
        return "dict"
    return type(v).__name__


def _as_array(v: Any) -> Optional[np.ndarray]:
    """``v`` as an array; ragged lists and odd objects become a 0-d object array."""
    if isinstance(v, Mapping):
        return None
    try:
        return np.asarray(v)
    except (ValueError, TypeError):
        boxed = np.empty((), dtype=object)
        boxed[()] = v
        return boxed


def _shapes_compatible(s1: Tuple[int, ...], s2: Tuple[int, ...]) -> bool:
    """Equal shapes, or equal once dimensions of size 1 are dropped.

    Paddle returns a loss of shape [1] where PyTorch returns a 0-d tensor; reprod_log
    compared those, so do we. Any other difference is a shape mismatch.
    """
    if s1 == s2:
        return True
    return [d for d in s1 if d != 1] == [d for d in s2 if d != 1]


def _diff_key(key: str, ref: Any, other: Any) -> _KeyDiff:
    if isinstance(ref, Mapping) and isinstance(other, Mapping):  # two empty dicts
        return _KeyDiff(key, "not_numeric", equal=True, kinds=("dict", "dict"))
    a, b = _as_array(ref), _as_array(other)
    if a is None or b is None:
        return _KeyDiff(key, "type_mismatch", kinds=(_kind(ref), _kind(other)))
    numeric = "biufc"
    if a.dtype.kind not in numeric or b.dtype.kind not in numeric:
        if a.dtype.kind in numeric or b.dtype.kind in numeric:
            return _KeyDiff(key, "type_mismatch", kinds=(_kind(ref), _kind(other)))
        try:
            equal = bool(a.shape == b.shape and np.array_equal(a, b))
        except Exception:  # objects whose == misbehaves are simply not equal
            equal = False
        return _KeyDiff(key, "not_numeric", equal=equal, kinds=(_kind(ref), _kind(other)))
    if not _shapes_compatible(a.shape, b.shape):
        return _KeyDiff(key, "shape_mismatch", shapes=(a.shape, b.shape))
    wide = np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64
    a64 = a.astype(wide).reshape(-1)
    b64 = b.astype(wide).reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        abs_diff = np.abs(a64 - b64).astype(np.float64)
        # Equal infinities and NaN against NaN count as equal (like allclose(equal_nan=True)).
        same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
        abs_diff[same] = 0.0
        ref_abs = np.abs(a64).astype(np.float64)
        ref_abs[~np.isfinite(ref_abs)] = 0.0
    if abs_diff.size == 0:
        stats = dict.fromkeys(("mean", "max", "min", "rel_mean", "rel_max", "ref_mean", "ref_max"), 0.0)
    else:
        mean, mx, mn = float(abs_diff.mean()), float(abs_diff.max()), float(abs_diff.min())
        ref_mean, ref_max = float(ref_abs.mean()), float(ref_abs.max())
        stats = {
            "mean": mean,
            "max": mx,
            "min": mn,
            "rel_mean": _ratio(mean, ref_mean),
            "rel_max": _ratio(mx, ref_max),
            "ref_mean": ref_mean,
            "ref_max": ref_max,
        }
    return _KeyDiff(key, "compared", stats=stats, abs_diff=abs_diff, ref_abs=ref_abs)


def _ratio(diff: float, scale: float) -> float:
    if math.isnan(diff):
        return math.nan
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0.0 else math.inf


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MethodResult:
    """One ``<method> diff`` line: the value and the threshold it was held to."""

    method: str
    value: float
    threshold: float
    passed: bool
    rule: str = ""  # how the threshold was made, naming the options: "diff_threshold['loss'] 1e-05"


@dataclass(frozen=True)
class KeyResult:
    """The check of one key (nested dict keys are joined with '.').

    ``status`` is "compared" (``methods`` holds the checks), "missing" (the key is only
    on one side; ``missing_in`` names the side without it), "shape_mismatch" (``shapes``),
    "type_mismatch" (``kinds``) or "not_numeric" (compared for equality only).
    """

    key: str
    status: str
    passed: bool
    methods: Tuple[MethodResult, ...] = ()
    missing_in: Optional[str] = None
    shapes: Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]] = None
    kinds: Optional[Tuple[str, str]] = None


@dataclass(frozen=True)
class DiffReport:
    """The outcome of ``ReprodDiffHelper.check``: per-key results and the verdict.

    ``names`` are the labels of the two sides (the reference first). A comparison with
    no keys at all does not pass: an empty file is not evidence of alignment.
    """

    keys: Tuple[KeyResult, ...]
    names: Tuple[str, str]
    passed: bool
    # the report names each key's threshold: per-key or relative thresholds were given (with one
    # absolute threshold for all, the lines stay the reprod_log lines of seeds 003/004)
    show_thresholds: bool = False

    @property
    def failed_keys(self) -> List[str]:
        return [k.key for k in self.keys if not k.passed]


# --------------------------------------------------------------------------- thresholds


def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PadiffError(f"{what} must be a number, got {value!r}.")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise PadiffError(f"{what} must be a number >= 0, got {value!r}.")
    return value


class _PerKey:
    """A threshold given as a number, or a dict key -> number with an optional "default"."""

    def __init__(self, option: Any, name: str, keys: Sequence[str], fallback: Optional[float]):
        self.by_key: Dict[str, Optional[float]] = {}
        self.default = fallback
        self.given = option is not None and (not isinstance(option, Mapping) or "default" in option)
        if option is None:
            return
        if isinstance(option, Mapping):
            unknown = [k for k in option if k != "default" and k not in keys]
            if unknown:
                raise PadiffError(
                    f"{name} names keys that are in neither info: {sorted(map(str, unknown))}. "
                    f"The keys are {list(keys)}; use \"default\" for all others."
                )
            for k, v in option.items():
                checked = _check_number(v, f"{name}[{k!r}]")
                if k == "default":
                    self.default = checked
                else:
                    self.by_key[k] = checked
            return
        self.default = _check_number(option, name)

    def __call__(self, key: str) -> Optional[float]:
        return self.by_key.get(key, self.default)

    def origin(self, key: str, name: str) -> str:
        """Which option gave ``key``'s threshold: ``rel_threshold['logits']``, ``diff_threshold``
        (one number, or the dict's "default"), or the built-in default."""
        if key in self.by_key:
            return f"{name}[{key!r}]"
        return f"{name}" if self.given else f"default {name}"


def _methods(diff_method: Any) -> Tuple[str, ...]:
    if isinstance(diff_method, str):
        chosen = ["min", "max", "mean"] if diff_method == "all" else [diff_method]
    elif isinstance(diff_method, (list, tuple)) and diff_method:
        chosen = list(diff_method)
    else:
        raise PadiffError(
            f"diff_method must be one of {list(METHODS)} or 'all', or a list of them; "
            f"got {diff_method!r}."
        )
    for m in chosen:
        if m not in METHODS:
            raise PadiffError(
                f"unknown diff_method {m!r}; use one of {list(METHODS)} or 'all'."
            )
    return tuple(dict.fromkeys(chosen))


def _judge(diff: _KeyDiff, method: str, atol: float, rtol: Optional[float], origins=("", "")) -> MethodResult:
    """``origins``: the names of the options that gave ``atol`` and ``rtol`` (for the rule)."""
    s = diff.stats
    rel = 0.0 if rtol is None else rtol
    a_from, r_from = origins
    if method == "allclose":
        # np.allclose(other, ref, rtol, atol): |other - ref| <= atol + rtol * |ref|.
        if diff.abs_diff is None or diff.abs_diff.size == 0:
            value = 0.0
        else:
            with np.errstate(invalid="ignore"):
                excess = diff.abs_diff - rel * diff.ref_abs
            value = math.nan if np.isnan(excess).any() else float(excess.max())
        threshold = atol
        rule = f"{a_from} {atol:g}" + (f", after {r_from} {rel:g} x |reference| per element"
                                       if rtol is not None else "")
    elif method in ("rel_mean", "rel_max"):
        value = s[method]
        threshold = atol if rtol is None else rtol
        rule = f"{a_from} {atol:g}" if rtol is None else f"{r_from} {rtol:g}"
    else:
        value = s[method]
        scale = s["ref_max"] if method == "max" else s["ref_mean"]
        threshold = atol + rel * scale
        rule = f"{a_from} {atol:g}" + (f" + {r_from} {rel:g} x {'largest' if method == 'max' else 'mean'} "
                                       f"|reference| {scale:.6g}" if rtol is not None else "")
    passed = not math.isnan(value) and value <= threshold
    return MethodResult(method, value, threshold, passed, rule)


def _build_report(
    diffs: Sequence[_KeyDiff],
    names: Tuple[str, str],
    diff_method: Any,
    diff_threshold: Any,
    rel_threshold: Any,
) -> DiffReport:
    methods = _methods(diff_method)
    keys = [d.key for d in diffs]
    atol = _PerKey(diff_threshold, "diff_threshold", keys, DEFAULT_DIFF_THRESHOLD)
    rtol = _PerKey(rel_threshold, "rel_threshold", keys, None)
    results = []
    for d in diffs:
        if d.status == "compared":
            origins = (atol.origin(d.key, "diff_threshold"), rtol.origin(d.key, "rel_threshold"))
            checks = tuple(_judge(d, m, atol(d.key), rtol(d.key), origins) for m in methods)
            results.append(KeyResult(d.key, d.status, all(c.passed for c in checks), checks))
        elif d.status == "not_numeric":
            results.append(KeyResult(d.key, d.status, d.equal, kinds=d.kinds))
        else:
            results.append(
                KeyResult(d.key, d.status, False, missing_in=d.missing_in, shapes=d.shapes, kinds=d.kinds)
            )
    passed = bool(results) and all(r.passed for r in results)
    show = isinstance(diff_threshold, Mapping) or rel_threshold is not None
    return DiffReport(tuple(results), names, passed, show)


# --------------------------------------------------------------------------- rendering


def _fmt_value(value: float) -> str:
    return repr(float(value))


def render_report(report: DiffReport) -> List[str]:
    """The report's lines, without the logging prefix.

    For every key a line ``<key>: `` and, indented by four spaces, one line per method
    ``<method> diff: check passed: <True|False>, value: <v>`` (or one line saying why the
    key could not be compared), then ``diff check passed`` or ``diff check failed``. Where
    per-key (a dict) or relative thresholds judged the keys, each method line ends with the
    threshold it was held to and the options it came from:
    ``mean diff: check passed: True, value: 2.3e-06, threshold: 1.1e-05 (diff_threshold 1e-06 +
    rel_threshold['logits'] 1e-05 x mean |reference| 1.02)``.
    """
    name1, name2 = report.names
    lines: List[str] = []
    for k in report.keys:
        lines.append(f"{k.key}: ")
        if k.status == "compared":
            for m in k.methods:
                held = f", threshold: {_fmt_value(m.threshold)} ({m.rule})" if report.show_thresholds else ""
                lines.append(
                    f"{INDENT}{m.method} diff: check passed: {m.passed}, value: {_fmt_value(m.value)}{held}"
                )
        elif k.status == "missing":
            lines.append(f"{INDENT}key missing: check passed: False, not in {k.missing_in}")
        elif k.status == "shape_mismatch":
            s1, s2 = k.shapes
            lines.append(
                f"{INDENT}shape mismatch: check passed: False, {name1}: {tuple(s1)}, {name2}: {tuple(s2)}"
            )
        elif k.status == "type_mismatch":
            t1, t2 = k.kinds
            lines.append(f"{INDENT}type mismatch: check passed: False, {name1}: {t1}, {name2}: {t2}")
        else:
            lines.append(f"{INDENT}exact match: check passed: {k.passed}")
    if not report.keys:
        lines.append("no keys to compare")
    lines.append("diff check passed" if report.passed else "diff check failed")
    return lines


# --------------------------------------------------------------------------- output


class _StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def _formatter() -> logging.Formatter:
    return logging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT)


def get_logger() -> logging.Logger:
    """The "padiff.reprod" logger. Unless you gave it handlers of your own, it prints to
    stdout in the guide's format and does not pass records on to the root logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(_formatter())
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return logger


def _make_parent(path: str) -> None:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _emit(
    lines: Sequence[str],
    path: Optional[str],
    echo: bool = True,
    hint: str = "Pass path= a file in a folder you can write to, or path=None to only print the report.",
) -> None:
    """Log ``lines`` at INFO on "padiff.reprod" (with ``echo``) and write the same
    formatted lines to ``path``. The file is opened first, so a bad path prints nothing."""
    stream = None
    if path is not None:
        try:
            _make_parent(path)
            stream = open(path, "w", encoding="utf-8")
        except OSError as err:
            raise PadiffError(f"cannot write the diff log '{path}': {_reason(err)}. {hint}") from err
    logger = get_logger()
    formatter = _formatter()
    try:
        for line in lines:
            record = logger.makeRecord(LOGGER_NAME, logging.INFO, __file__, 0, line, None, None)
            if stream is not None:
                stream.write(formatter.format(record) + "\n")
            if echo and logger.isEnabledFor(logging.INFO):
                logger.handle(record)
    finally:
        if stream is not None:
            stream.close()


# --------------------------------------------------------------------------- helper


class ReprodDiffHelper:
    """Loads two reprod_log files, compares them and reports the differences."""

    def __init__(self) -> None:
        self._loaded: List[Tuple[Any, str]] = []  # (dict, path) so reports can name files
        self._diffs: Optional[List[_KeyDiff]] = None
        self._names: Tuple[str, str] = ("info1", "info2")
        self.last_report: Optional[DiffReport] = None

    def load_info(self, path: Union[str, os.PathLike]) -> Dict[Any, Any]:
        """Read a file saved by ``ReprodLogger.save`` (or ``np.save`` of a dict).

        When ``path`` does not exist, ``path + ".npy"`` is tried (``np.save`` adds it).
        The file is unpickled: load only files you trust.
        """
        data = _load_info(os.fspath(path))
        self._loaded.append((data, os.fspath(path)))
        return data

    def compare_info(self, info1: Any, info2: Any, names: Optional[Tuple[str, str]] = None) -> None:
        """Compare two dicts of arrays (or scalars, lists, nested dicts); ``info1`` is the
        reference. ``names`` label the sides in the report; by default the paths given to
        ``load_info`` for these dicts, else "info1" and "info2"."""
        d1, d2 = _as_info(info1, "info1"), _as_info(info2, "info2")
        if names is None:
            names = (self._name_of(info1, "info1"), self._name_of(info2, "info2"))
        elif not (isinstance(names, (tuple, list)) and len(names) == 2):
            raise PadiffError(f"names must be a pair of labels, got {names!r}.")
        self._names = (str(names[0]), str(names[1]))
        self._diffs = _compare(d1, d2, self._names)
        self.last_report = None

    def check(
        self,
        diff_method: Any = "mean",
        diff_threshold: Any = DEFAULT_DIFF_THRESHOLD,
        rel_threshold: Any = None,
    ) -> DiffReport:
        """Judge the last ``compare_info`` without printing or writing anything.

        ``diff_threshold`` is the absolute threshold, a number or a dict key -> number with
        an optional "default" (1e-6 when absent). ``rel_threshold`` (same forms, default
        none) adds ``rel_threshold * |reference|`` to it, like ``np.allclose``: for "mean"
        and "min" the reference's mean magnitude, for "max" its largest magnitude. For
        "rel_mean"/"rel_max" the value is already relative and is held to
        ``rel_threshold`` when given, else to ``diff_threshold``.
        """
        if self._diffs is None:
            raise PadiffError(
                "nothing to report: call compare_info(info1, info2) before check() or report()."
            )
        report = _build_report(self._diffs, self._names, diff_method, diff_threshold, rel_threshold)
        self.last_report = report
        return report

    def report(
        self,
        diff_method: Any = "mean",
        diff_threshold: Any = DEFAULT_DIFF_THRESHOLD,
        path: Optional[Union[str, os.PathLike]] = "./diff.txt",
        rel_threshold: Any = None,
    ) -> bool:
        """Print the report through the "padiff.reprod" logger, write the same lines to
        ``path`` (parent folders are created; None writes no file) and return whether every
        key passed. See ``check`` for the thresholds."""
        report = self.check(diff_method, diff_threshold, rel_threshold)
        _emit(render_report(report), None if path is None else os.fspath(path))
        return report.passed

    def _name_of(self, info: Any, fallback: str) -> str:
        for obj, path in self._loaded:
            if obj is info:
                return path
        return fallback


def _load_info(path: str) -> Dict[Any, Any]:
    candidates = [path, path + ".npy"]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise PadiffError(
            f"no reprod_log file at '{path}'. Check the path; the file is written by "
            "ReprodLogger.save."
        )
    try:
        data = np.load(found, allow_pickle=True).tolist()
    except Exception as err:
        raise PadiffError(
            f"cannot read '{found}' as a reprod_log file ({type(err).__name__}: {err}). "
            "Save it again with ReprodLogger.save."
        ) from err
    if not isinstance(data, dict):
        raise PadiffError(
            f"'{found}' holds a {type(data).__name__}, not a dict of named arrays. "
            "Save the arrays with ReprodLogger.add(...) and ReprodLogger.save(...)."
        )
    return data


def _as_info(info: Any, side: str) -> Mapping:
    if isinstance(info, ReprodLogger):
        return info.data
    if not isinstance(info, Mapping):
        raise PadiffError(
            f"compare_info: {side} is a {type(info).__name__}, not a dict of named arrays; "
            "pass what load_info returned, or a dict."
        )
    return info


def _compare(info1: Mapping, info2: Mapping, names: Tuple[str, str]) -> List[_KeyDiff]:
    f1 = _flatten(info1, "", {}, names[0])
    f2 = _flatten(info2, "", {}, names[1])
    diffs = []
    for key, v1 in f1.items():
        if key not in f2:
            diffs.append(_KeyDiff(key, "missing", missing_in=names[1]))
        else:
            diffs.append(_diff_key(key, v1, f2[key]))
    for key in f2:
        if key not in f1:
            diffs.append(_KeyDiff(key, "missing", missing_in=names[0]))
    return diffs


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointResult:
    """One acceptance checkpoint. ``status`` is "passed", "failed", "missing" (a file of
    the pair is absent; ``missing_files`` lists what was looked for) or "error" (a file
    could not be read; ``error`` says why)."""

    name: str
    status: str
    paddle_file: Optional[str] = None
    reference_file: Optional[str] = None
    log_file: Optional[str] = None
    missing_files: Tuple[str, ...] = ()
    error: Optional[str] = None
    report: Optional[DiffReport] = None


@dataclass(frozen=True)
class CheckpointSummary:
    results: Tuple[CheckpointResult, ...]

    @property
    def passed(self) -> bool:
        """True when all five checkpoints are present and pass."""
        return all(r.status == "passed" for r in self.results)

    def __getitem__(self, name: str) -> CheckpointResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


def _checkpoint_option(option: Any, name: str, checkpoint: str, default: float) -> Any:
    if option is None:
        return default
    if isinstance(option, Mapping):
        known = {c for c, _ in CHECKPOINTS} | {"default"}
        unknown = [k for k in option if k not in known]
        if unknown:
            raise PadiffError(
                f"check_checkpoints: {name} is keyed by checkpoint; unknown names "
                f"{sorted(map(str, unknown))}. Use {[c for c, _ in CHECKPOINTS]} or \"default\"."
            )
        return option.get(checkpoint, option.get("default", default))
    return option


def check_checkpoints(
    folder: Union[str, os.PathLike],
    out_dir: Optional[Union[str, os.PathLike]] = None,
    diff_threshold: Any = None,
    rel_threshold: Any = None,
    diff_method: Any = "mean",
    show: bool = True,
) -> CheckpointSummary:
    """Check the guide's five file pairs in ``folder`` and write their diff logs.

    For each checkpoint NAME in forward, metric, loss, bp_align, train_align the pair is
    ``NAME_paddle.npy`` and the reference ``NAME_torch.npy`` (also accepted, in this order:
    ``NAME_pytorch.npy``, ``NAME_ref.npy``; for train_align ``train_align_benchmark.npy``
    comes first). Each present pair is compared (reference first) and its report written to
    ``out_dir/NAME_diff.log`` (``out_dir`` defaults to ``folder``). A pair with a file
    absent is "missing" and no log is written for it.

    ``diff_threshold`` and ``rel_threshold``: None for the defaults (1e-6 absolute, and
    0.0015 for train_align, the guide's 0.15%; no relative threshold), a number for all
    checkpoints, or a dict keyed by checkpoint name (and "default") whose values are what
    ``ReprodDiffHelper.report`` takes (a number, or a dict key -> number).

    With ``show`` the summary table is printed through the "padiff.reprod" logger.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise PadiffError(
            f"check_checkpoints: '{folder}' is not a folder. Pass the folder holding "
            "forward_paddle.npy, forward_torch.npy and the other pairs."
        )
    out_dir = folder if out_dir is None else os.fspath(out_dir)
    results = []
    for checkpoint, default_threshold in CHECKPOINTS:
        atol = _checkpoint_option(diff_threshold, "diff_threshold", checkpoint, default_threshold)
        rtol = _checkpoint_option(rel_threshold, "rel_threshold", checkpoint, None)
        results.append(_check_one(folder, out_dir, checkpoint, atol, rtol, diff_method))
    summary = CheckpointSummary(tuple(results))
    if show:
        _emit(render_checkpoint_summary(summary), None)
    return summary


def _check_one(folder, out_dir, checkpoint, atol, rtol, diff_method) -> CheckpointResult:
    suffixes = _TRAIN_ALIGN_REFERENCE_SUFFIXES if checkpoint == "train_align" else _REFERENCE_SUFFIXES
    paddle_name = f"{checkpoint}_paddle.npy"
    ref_names = [f"{checkpoint}_{s}.npy" for s in suffixes]
    paddle_path = os.path.join(folder, paddle_name)
    ref_path = next(
        (os.path.join(folder, n) for n in ref_names if os.path.isfile(os.path.join(folder, n))), None
    )
    missing = []
    if not os.path.isfile(paddle_path):
        missing.append(paddle_name)
    if ref_path is None:
        missing.append(" or ".join(ref_names))
    if missing:
        return CheckpointResult(
            checkpoint,
            "missing",
            paddle_file=None if paddle_name in missing else paddle_path,
            reference_file=ref_path,
            missing_files=tuple(missing),
        )
    try:
        ref_info = _load_info(ref_path)
        paddle_info = _load_info(paddle_path)
    except PadiffError as err:
        return CheckpointResult(
            checkpoint, "error", paddle_file=paddle_path, reference_file=ref_path, error=str(err)
        )
    names = (os.path.basename(ref_path), paddle_name)
    report = _build_report(_compare(ref_info, paddle_info, names), names, diff_method, atol, rtol)
    log_path = os.path.join(out_dir, f"{checkpoint}_diff.log")
    _emit(render_report(report), log_path, echo=False, hint="Pass out_dir= a folder you can write to.")
    return CheckpointResult(
        checkpoint,
        "passed" if report.passed else "failed",
        paddle_file=paddle_path,
        reference_file=ref_path,
        log_file=log_path,
        report=report,
    )


def render_checkpoint_summary(summary: CheckpointSummary) -> List[str]:
    """The summary table: one row per checkpoint (name, result, detail) and a totals line."""
    rows = [("checkpoint", "result", "detail")]
    for r in summary.results:
        if r.status in ("passed", "failed"):
            detail = os.path.basename(r.log_file)
            if r.status == "failed":
                detail += f" (failed keys: {', '.join(r.report.failed_keys) or 'none compared'})"
        elif r.status == "missing":
            detail = "not found: " + "; ".join(r.missing_files)
        else:
            detail = r.error or ""
        rows.append((r.name, r.status, detail))
    w0 = max(len(row[0]) for row in rows)
    w1 = max(len(row[1]) for row in rows)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
    counts = {}
    for r in summary.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    order = ("passed", "failed", "missing", "error")
    lines.append(", ".join(f"{counts[s]} {s}" for s in order if s in counts))
    return lines
