"""``calibrate``: measure how much one model differs from itself in a higher precision, layer
by layer, and use that noise floor as the tolerance of a comparison.

The model runs twice on the same inputs: a copy in its own precision (the model is never
touched) and a copy cast to ``dtype`` (float64 by default). Every layer output, gradient and
parameter gradient of the two is compared as ``auto_diff`` compares two ports; what they differ
by is the rounding noise of the model's own precision at that layer. A port computed in the
same precision by another framework differs from the reference by about as much (each
deviates from the exact result by that noise), so

    cal = padiff.calibrate(torch_model, torch_inputs)
    auto_diff(paddle_model, torch_model, inputs, options={"calibration": cal})

allows every layer ``k`` times (10 by default) its measured noise, never less than the
default rule, and says in a failure report whether the difference lies within the noise.
Calibrate the reference model (the torch one across frameworks): layers are matched by their
dotted path without the root's name, parameters by their layer's path when names differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from .compare.metrics import CALIBRATION_K, UNIT_ROUNDOFF
from .errors import PadiffError
from .frameworks import adapter_for, type_choices
from .options import build_options
from .report.run import Printer
from .run.live import prepare_live
from .run.prepare import check_callables, pair_of
from .run.train import clear_grads
from .side import make_sides

STAGES = ("forward", "loss", "backward", "grad")


@dataclass(frozen=True)
class LayerNoise:
    """The rounding noise measured at one layer (one stage), as the auto rule judges errors."""

    max_abs: float  # greatest |x - x_ref|
    max_scaled: float  # greatest |x - x_ref| over the tensor's scale (its largest magnitude)
    rel_l2: float  # ||x - x_ref|| / ||x_ref||
    reference: str = "float64"  # the precision of the copy the model was measured against

    def merged(self, other: "LayerNoise") -> "LayerNoise":
        return LayerNoise(max(self.max_abs, other.max_abs), max(self.max_scaled, other.max_scaled),
                          max(self.rel_l2, other.rel_l2), self.reference)


def _key(path: str) -> str:
    """A dotted path without the root's name: ``TorchNet.blocks.0`` -> ``blocks.0``; the root
    itself is ``""``."""
    return path.split(".", 1)[1] if "." in path else ""


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per-layer noise of one model: ``noise[(stage, key)]`` with ``stage`` one of forward,
    loss, backward, grad and ``key`` the dotted path without the root's name. Pass it as
    ``options={"calibration": cal}``; ``layer_tolerances()`` gives plain per-layer atol values."""

    model: str  # the calibrated model's root name
    dtype: str  # the precision it was measured against
    noise: Mapping[Tuple[str, str], LayerNoise]
    k: float = CALIBRATION_K
    notes: Tuple[str, ...] = ()
    _index: Dict[str, Dict[str, LayerNoise]] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        index: Dict[str, Dict[str, LayerNoise]] = {}
        for (stage, key), n in self.noise.items():
            parts = key.split(".") if key else []
            prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)] or [""]
            by = index.setdefault(stage, {})
            for p in prefixes:
                by[p] = by[p].merged(n) if p in by else n
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.noise)

    def noise_for(self, path: str, stage: Optional[str] = None) -> Optional[LayerNoise]:
        """The noise measured for a layer or parameter path (any model's root name), at one
        stage or, with ``stage=None``, the largest over the stages. A path the calibration
        did not see takes the noise of its nearest recorded parent layer (all its recorded
        tensors together); a path with no recorded parent gets None (the default rule)."""
        if stage == "loss" or path == "loss":
            key, stages = "loss", ["loss"]
        else:
            key = _key(path)
            stages = [stage] if stage else [s for s in STAGES if s != "loss"]
        found = None
        for st in stages:
            by = self._index.get(st, {})
            if st == "loss":
                hit = self.noise.get(("loss", "loss"))
            elif not key:
                hit = by.get("")
            else:
                parts = key.split(".")
                hit = next((by[p] for p in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if p in by), None)
            if hit is not None:
                found = hit if found is None else found.merged(hit)
        return found

    def layer_tolerances(self, k: Optional[float] = None) -> Dict[str, Dict[str, float]]:
        """``{pattern: {"atol": k * greatest measured difference, "rtol": 0.0}}`` for every
        recorded layer and parameter, usable as ``options={"layer_tolerances": ...}``. These are
        plain absolute tolerances (exactly those, the same for the forward and the backward of
        a layer), valid for inputs of the size calibrated with; the ``calibration`` option
        judges relative to scale and per stage instead."""
        k = self.k if k is None else float(k)
        out: Dict[str, float] = {}
        for (stage, key), n in self.noise.items():
            pattern = "loss" if stage == "loss" else (f"*.{key}" if key else self.model)
            out[pattern] = max(out.get(pattern, 0.0), k * n.max_abs)
        return {p: {"atol": a, "rtol": 0.0} for p, a in out.items()}

    def describe(self) -> str:
        return f"{self.dtype} calibration of {self.model}, {len(self.noise)} layer figures, k={self.k:g}"

    def summary(self, top: int = 10) -> List[str]:
        """The noisiest layers, one line each, for a report."""
        rows = sorted(self.noise.items(), key=lambda kv: -kv[1].max_scaled)[:top]
        lines = [f"Measured noise of {self.model} against its {self.dtype} copy (greatest first):"]
        for (stage, key), n in rows:
            lines.append(f"  {stage:8s} {key or self.model}: {n.max_scaled:.3g} x scale, relative L2 {n.rel_l2:.3g}, "
                         f"greatest difference {n.max_abs:.3g}")
        return lines + list(self.notes)


def _cast_inputs(ad, value, dtype: str):
    if ad.is_tensor(value):
        if not ad.is_floating(value):
            return value
        return ad.from_array(ad.to_numpy(value).astype(dtype), dtype, like=value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast_inputs(ad, v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_inputs(ad, v, dtype) for k, v in value.items()}
    return value


def _run_copies(reference, same, inputs, loss_pair):
    """One step of the two copies, compared as ``auto_diff`` compares two models (without
    copying weights: they are the same), unprinted; (the step's findings, the run's notes)."""
    opts = build_options(None, auto_weights=False)
    sides, ref_i = make_sides(reference, same)
    loss_fns = pair_of(loss_pair, "loss_fn")
    check_callables(sides, loss_fns, None, None)
    live, notes = prepare_live(sides, ref_i, inputs, loss_fns, None, None, opts, None, Printer(quiet=True))
    try:
        return live.step(0), notes
    finally:
        for side in sides:
            clear_grads(side)


def calibrate(model, inputs, *, dtype: str = "float64", loss_fn=None, k: float = CALIBRATION_K) -> Calibration:
    """Measure the rounding noise of ``model`` at every layer: the difference between the model
    in its own precision and a copy in ``dtype``, on ``inputs`` (the model's input: a dict of
    keyword arguments, a list/tuple of positional ones, or one tensor). ``loss_fn`` takes the
    model's output (of either copy) and returns a scalar; a pair gives one for the ``dtype`` copy
    and one for the model's own precision. The model itself is neither run nor changed."""
    ad = adapter_for(model, "model")
    if not ad.is_layer(model):
        raise PadiffError(f"calibrate takes a model ({type_choices('model')}), got {type(model).__name__}.")
    if dtype not in UNIT_ROUNDOFF:
        raise PadiffError(f"calibrate dtype={dtype!r} is not one of {', '.join(UNIT_ROUNDOFF)}.")
    if not k > 0:
        raise PadiffError(f"calibrate k must be > 0, got {k!r}.")
    if loss_fn is not None and not callable(loss_fn):
        if not isinstance(loss_fn, (list, tuple)) or len(loss_fn) != 2:
            raise PadiffError("loss_fn must be a function, or a pair [for the copy in dtype, for the model].")
    loss_pair = None if loss_fn is None else list(loss_fn) if not callable(loss_fn) else [loss_fn, loss_fn]

    reference = ad.copy_layer(model, dtype)
    same = ad.copy_layer(model)
    step, notes = _run_copies(reference, same, (_cast_inputs(ad, inputs, dtype), inputs), loss_pair)
    noise: Dict[Tuple[str, str], LayerNoise] = {}
    notes = [f"Note: {n}" for n in notes]
    for f in step.all_findings():
        d = f.diff
        if f.stage not in STAGES or d.problem is not None or not d.numel:
            if d.problem is not None:
                notes.append(f"Not measured at {f.ref_path} ({f.what}): {d.message().splitlines()[0]}")
            continue
        tol = d.tolerance
        if tol is not None and tol.auto and (max(tol.explained) > 0 or tol.floor > tol.atol * d.scale):
            # Carries a near-tie flip from upstream, or is rounding noise the floor already covers.
            continue
        path = f.ref_node.path if f.ref_node is not None else f.ref_path
        key = ("loss", "loss") if f.stage == "loss" else (f.stage, _key(path))
        n = LayerNoise(d.max_abs if not d.flips else 0.0, d.max_scaled if not d.flips else 0.0,
                       d.rel_l2_rest if d.flips else d.rel_l2, dtype)
        noise[key] = noise[key].merged(n) if key in noise else n
    name = type(model).__name__
    return Calibration(name, dtype, noise, float(k), tuple(notes))
