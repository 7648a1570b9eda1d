"""One immutable settings object, built once from keyword arguments, the ``options`` dict
and the environment switches of the seeds, then passed down. Nothing else reads
``os.environ``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

from .errors import PadiffError

COMPARE_MODES = ("auto", "strict", "mean", "abs_mean")
DIFF_PHASES = ("forward", "backward", "both")
REPORT_KINDS = ("text", "html")

# Spellings users' scripts carry (seeds 001/002) mapped to the field they mean.
_ALIASES = {
    "auto_init": "auto_weights",
    "auto_weight": "auto_weights",
}

_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


def _env_flag(env: Mapping[str, str], names, default: bool) -> bool:
    for name in names:
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        low = raw.strip().lower()
        if low in _ON:
            return True
        if low in _OFF:
            return False
        raise PadiffError(
            f"Environment variable {name}={raw!r} is not understood: use ON or OFF."
        )
    return default


@dataclass(frozen=True)
class Options:
    """Everything that steers one padiff run. Frozen: build a new one to change it."""

    atol: Optional[float] = None  # None: the per-dtype, scale-aware default
    rtol: Optional[float] = None
    # "auto": every element, by the rounding-aware rule, with the user's atol/rtol accepted on top;
    # "strict": every element within exactly the user's atol/rtol (numpy.allclose); "mean"/"abs_mean".
    compare_mode: str = "auto"
    diff_phase: str = "both"
    single_step: bool = False
    auto_weights: bool = True
    steps: int = 1
    log_dir: str = "padiff_log"
    report: str = "text"
    api_check: bool = True
    skip_wrap_layer: bool = False
    path_log: bool = False
    thirdparty_api: Tuple[str, ...] = ()
    # Per-layer overrides: tuple of (fnmatch pattern on the dotted path, atol, rtol).
    layer_tolerances: Tuple[Tuple[str, Optional[float], Optional[float]], ...] = ()
    # Per-dtype overrides: tuple of (dtype name, atol, rtol).
    dtype_tolerances: Tuple[Tuple[str, Optional[float], Optional[float]], ...] = ()
    tree_inline_lines: int = 60
    # Records of one model's run kept in memory; beyond this they go to a temporary file and are
    # read back memory-mapped (issue 9's spill). None: no limit. 0 (the default): every record of
    # 64 KiB or more goes to the file, so the process holds little more than a bare run does
    # (issue 18: 1.2x a bare run's peak, where 256 MB gave 3x, for up to about 10 % more time).
    memory_budget_mb: Optional[float] = 0.0
    # Compare in a worker thread while the tested model runs its backward: None decides by
    # whether the framework leaves a CPU core idle (paddle's CPU kernels, any GPU run).
    overlap: Optional[bool] = None
    use_loss: bool = False
    use_opt: bool = False
    calibration: Optional[object] = None  # padiff.calibrate(...): per-layer measured noise
    # Print the report while it runs (False: keep it only in result.report; assert_aligned's default)
    verbose: bool = True

    @property
    def check_forward(self) -> bool:
        return self.diff_phase in ("forward", "both")

    @property
    def check_backward(self) -> bool:
        return self.diff_phase in ("backward", "both")

    def shown(self) -> dict:
        """The options a user sees in the "Your options" block."""
        shown = {
            "atol": "auto" if self.atol is None else self.atol,
            "rtol": "auto" if self.rtol is None else self.rtol,
            "compare_mode": self.compare_mode,
            "diff_phase": self.diff_phase,
            "single_step": self.single_step,
            "auto_weights": self.auto_weights,
            "steps": self.steps,
            "use_loss": self.use_loss,
            "use_opt": self.use_opt,
        }
        if self.calibration is not None:
            shown["calibration"] = self.calibration.describe()
        return shown


_FIELDS = {f.name for f in dataclasses.fields(Options)}
# Set by padiff itself from the call, not by users in ``options``.
_DERIVED = {"use_loss", "use_opt"}


def _number(value, what: str, *, allow_none: bool = False) -> Optional[float]:
    """A finite number >= 0 (a bool or a string is a mistake, not a number)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PadiffError(f"Option {what} must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise PadiffError(f"Option {what} must be a number >= 0, got {value}.")
    return value


def _flag(value, what: str) -> bool:
    """True/False (or 1/0); a string such as "False" is refused rather than read as true."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise PadiffError(f"Option {what} must be True or False, got {value!r} ({type(value).__name__}).")


def _tolerance_table(value, what):
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise PadiffError(
            f"Option {what} must be a dict like {{'encoder.*': {{'atol': 1e-3, 'rtol': 1e-4}}}}, "
            f"got {type(value).__name__}."
        )
    rows = []
    for key, tol in value.items():
        if isinstance(tol, numbers.Real) and not isinstance(tol, bool):
            rows.append((str(key), _number(tol, f"{what}[{key!r}]"), None))
        elif isinstance(tol, Mapping) and set(tol) <= {"atol", "rtol"}:
            rows.append((str(key), _number(tol.get("atol"), f"{what}[{key!r}]['atol']", allow_none=True),
                         _number(tol.get("rtol"), f"{what}[{key!r}]['rtol']", allow_none=True)))
        else:
            raise PadiffError(
                f"Option {what}[{key!r}] must be a number (atol) or a dict with 'atol'/'rtol', got {tol!r}."
            )
    return tuple(rows)


def _api_names(value, what: str) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise PadiffError(f"Option {what} must be a list of dotted function names ('pkg.mod.op'), got {value!r}.")
    return tuple(v.strip() for v in value if v.strip())


def build_options(
    options: Optional[Mapping] = None,
    env: Optional[Mapping[str, str]] = None,
    **kwargs,
) -> Options:
    """Merge keyword options (seed 001 style), the ``options`` dict (seed 002 style) and the
    environment switches into one frozen :class:`Options`. Keywords win over the dict."""
    env = os.environ if env is None else env
    merged = _merged(options, kwargs)
    values = _checked_settings(merged)
    values.update(_checked_extensions(merged))
    values.update(_switches(merged, values, env))
    return Options(**values)


def _merged(options, kwargs) -> dict:
    """The ``options`` dict and the keywords as one dict of canonical names (keywords win);
    an unknown name is refused with the closest known one."""
    merged = {}
    for source in (options or {}), kwargs:
        if not isinstance(source, Mapping):
            raise PadiffError(f"`options` must be a dict, got {type(source).__name__}.")
        for key, value in source.items():
            key = _ALIASES.get(key, key)
            merged[key] = value
    unknown = sorted(k for k in merged if k not in _FIELDS or k in _DERIVED)
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(_FIELDS - _DERIVED), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise PadiffError(f"Unknown option {key!r}.{hint} Known options: {', '.join(sorted(_FIELDS - _DERIVED))}.")
    return merged


def _checked_settings(merged: dict) -> dict:
    """The plain settings the user gave (numbers, choices, flags, counts), each checked."""
    values = {}
    for key in ("atol", "rtol"):
        if merged.get(key) is not None:
            values[key] = _number(merged[key], key)
    for key, choices in (("compare_mode", COMPARE_MODES), ("diff_phase", DIFF_PHASES), ("report", REPORT_KINDS)):
        if key in merged:
            if not isinstance(merged[key], str) or merged[key] not in choices:
                raise PadiffError(f"Option {key}={merged[key]!r} is not one of {', '.join(choices)}.")
            values[key] = merged[key]
    for key in ("single_step", "auto_weights", "api_check", "skip_wrap_layer", "path_log", "verbose"):
        if key in merged:
            values[key] = _flag(merged[key], key)
    if "steps" in merged:
        steps = merged["steps"]
        if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
            raise PadiffError(f"Option steps must be a whole number >= 1, got {steps!r}.")
        values["steps"] = int(steps)
    if "memory_budget_mb" in merged:
        budget = merged["memory_budget_mb"]
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Real)
                                   or not budget >= 0):
            raise PadiffError(f"Option memory_budget_mb must be a number of megabytes >= 0 or None, got {budget!r}.")
        values["memory_budget_mb"] = budget
    if merged.get("overlap") is not None:
        values["overlap"] = _flag(merged["overlap"], "overlap")
    if "tree_inline_lines" in merged:
        lines = merged["tree_inline_lines"]
        if not isinstance(lines, numbers.Integral) or isinstance(lines, bool) or lines < 0:
            raise PadiffError(f"Option tree_inline_lines must be a whole number of lines >= 0, got {lines!r}.")
        values["tree_inline_lines"] = int(lines)
    return values


def _checked_extensions(merged: dict) -> dict:
    """The settings that extend padiff (extra API names, a calibration, tolerance tables), checked."""
    values = {}
    if "thirdparty_api" in merged:
        values["thirdparty_api"] = _api_names(merged["thirdparty_api"], "thirdparty_api")
    if merged.get("calibration") is not None:
        if not callable(getattr(merged["calibration"], "noise_for", None)):
            raise PadiffError(f"Option calibration must be what padiff.calibrate(model, inputs) returns, got "
                              f"{type(merged['calibration']).__name__}.")
        values["calibration"] = merged["calibration"]
    values["layer_tolerances"] = _tolerance_table(merged.get("layer_tolerances"), "layer_tolerances")
    values["dtype_tolerances"] = _tolerance_table(merged.get("dtype_tolerances"), "dtype_tolerances")
    return values


def _switches(merged: dict, values: dict, env: Mapping[str, str]) -> dict:
    """The log folder and the environment switches (seed 001), read here, once: an option the
    user gave wins over its switch."""
    out = {}
    if "log_dir" in merged:
        if not isinstance(merged["log_dir"], (str, os.PathLike)) or not os.fspath(merged["log_dir"]):
            raise PadiffError(f"Option log_dir must be a folder path, got {merged['log_dir']!r}.")
        out["log_dir"] = os.fspath(merged["log_dir"])
    elif env.get("PADIFF_LOG_DIR"):
        out["log_dir"] = env["PADIFF_LOG_DIR"]
    if "api_check" not in values:
        out["api_check"] = _env_flag(env, ("PADIFF_API_CHECK",), True)
    if "skip_wrap_layer" not in values:
        out["skip_wrap_layer"] = _env_flag(env, ("PADIFF_SKIP_WRAP_LAYER", "PADIFF_SIKP_WRAP_LAYER"), False)
    if "path_log" not in values:
        out["path_log"] = _env_flag(env, ("PADIFF_PATH_LOG",), False)
    if "thirdparty_api" not in values and env.get("PADDLE_THIRDPARTY_API"):
        out["thirdparty_api"] = tuple(
            s.strip() for s in env["PADDLE_THIRDPARTY_API"].split(",") if s.strip()
        )
    return out


def check_log_dir(log_dir: str, option: str = "log_dir") -> None:
    """Raise PadiffError unless files can be written into ``log_dir``. A folder that does not
    exist yet is created to try, and removed again: the check leaves nothing behind."""
    created = []
    try:
        missing, p = [], os.path.abspath(log_dir)
        while not os.path.lexists(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
        fd, probe = tempfile.mkstemp(prefix=".padiff-write-test-", dir=log_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PadiffError(
            f"Option {option}: cannot write padiff's log folder `{log_dir}`: {e.strerror or e}. Choose a writable "
            "folder with options={'log_dir': ...} or the PADIFF_LOG_DIR environment variable."
        ) from None
    finally:
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:
                pass


def preflight(opts: Options) -> None:
    """What the options need from this machine, checked before any model runs: a writable log
    folder, and Jinja2 for ``report="html"``."""
    check_log_dir(opts.log_dir)
    if opts.report == "html":
        import importlib.util

        if importlib.util.find_spec("jinja2") is None:
            raise PadiffError("Option report='html' needs Jinja2: pip install 'padiff[html]' (or pip install jinja2), "
                              "or use the text report (options={'report': 'text'}).")
