"""Before any model runs: inputs turned into calls, the inputs checked against each other, the
user's functions checked, and the notes that warn of a comparison that cannot agree (random
layers in train mode, several steps without an optimizer).

Shared by ``auto_diff`` (two live models), ``padiff.dump`` (one) and ``compare_dumps`` (two
recorded inputs): the checks and their wording are one.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..compare import nonfinite
from ..compare.metrics import compare_arrays, tolerance_for
from ..errors import PadiffError
from ..frameworks import framework_of
from ..options import Options
from ..side import Side
from ..structure import flatten, show_id
from ..weights.assign import layer_tree

_ORDINAL = ("first", "second")


# --- inputs -> calls ------------------------------------------------------------------------------

def _accepts(fn, keys) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    params = sig.parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return set(keys) <= names


def _with_grad_leaves(side: Side, value):
    """The same nested input with every floating tensor replaced by a fresh copy that records
    its gradient: the backward then reaches the input (and runs for weightless models). The
    user's own tensors are not touched."""
    ad = side.adapter
    if ad.is_tensor(value):
        return ad.detach_requires_grad(value) if ad.is_floating(value) else value
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_with_grad_leaves(side, v) for v in value)
    if isinstance(value, dict):
        return {k: _with_grad_leaves(side, v) for k, v in value.items()}
    return value


def make_call(side: Side, inp, notes: List[str], grad_inputs: bool = False):
    """A no-argument callable running the model on one side's input: a dict is passed as
    keywords, a list/tuple as positional arguments, anything else as the single argument."""
    model = side.model
    if grad_inputs:
        inp = _with_grad_leaves(side, inp)
    if isinstance(inp, dict):
        fwd = side.adapter.forward_callable(model)
        if _accepts(fwd, inp.keys()):
            return lambda: model(**inp)
        notes.append(
            f"The {side.label} model's forward does not take the keyword(s) {', '.join(map(repr, inp))}; "
            "padiff passed the dict's values by position instead."
        )
        values = list(inp.values())
        return lambda: model(*values)
    if isinstance(inp, (list, tuple)):
        return lambda: model(*inp)
    return lambda: model(inp)


def input_pair(sides: Sequence[Side], inputs, notes: List[str]):
    """The user's ``inputs`` as (first model's input, second model's input). One numpy array
    (PaDiff before 0.2) goes to both models, each as a tensor of its own framework."""
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "biuf":
        notes.append(f"One numpy array {list(inputs.shape)} ({inputs.dtype}) was given as the input: each model "
                     "received it as one positional tensor of its framework.")
        inputs = tuple(side.adapter.from_array(inputs, inputs.dtype.name) for side in sides)
    if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
        raise PadiffError(
            "inputs must be a pair (input of the first model, input of the second model), each a dict of "
            "keyword arguments, a list/tuple of positional arguments, or a single tensor; or one numpy "
            "array that both models take as their only input."
        )
    check_input_frameworks(sides, inputs)
    return inputs


# --- the inputs against each other ----------------------------------------------------------------

def _leaf_array(side: Side, leaf):
    """(array, dtype name) of an input leaf; the framework's dtype name for tensors, since a
    bfloat16 tensor arrives as a float32 array."""
    ad = side.adapter
    if ad.is_tensor(leaf):
        return ad.to_numpy(leaf), ad.dtype_name(leaf)
    if isinstance(leaf, (np.ndarray, int, float, bool, np.generic)):
        arr = np.asarray(leaf)
        return arr, str(arr.dtype)
    return None, ""


def check_input_frameworks(sides, inputs) -> None:
    """Each input holds tensors of its own model's framework: a torch tensor given to the paddle
    model (inputs in the wrong order) is named before anything runs."""
    foreign = []
    for i, (side, inp) in enumerate(zip(sides, inputs)):
        kinds = {}
        for id_path, leaf in flatten(inp, lambda x: framework_of(x) is not None):
            fw = framework_of(leaf)
            if fw is not None and fw != side.adapter.name:
                kinds.setdefault(fw, show_id(id_path, "input"))
        foreign += [(i, fw, where) for fw, where in kinds.items()]
    if not foreign:
        return
    said = [f"the {_ORDINAL[i]} input holds {fw} tensors ({where}) but the {_ORDINAL[i]} model is "
            f"{sides[i].adapter.name}" for i, fw, where in foreign]
    swapped = (len(foreign) == 2 and foreign[0][0] == 0 and foreign[1][0] == 1
               and foreign[0][1] == sides[1].adapter.name and foreign[1][1] == sides[0].adapter.name)
    text = ", and ".join(said)
    raise PadiffError(
        text[0].upper() + text[1:] + ": inputs are in model order (the first model's input first), each made of "
        "its own model's tensors." + (" Swap the two inputs." if swapped else "")
    )


@dataclass(frozen=True)
class InputWords:
    """How the input checks name what they compare: two live models, or two dumps."""

    count_subject: str  # "The two", "The dumps'"
    subject: str  # "The models'", "The dumps'"
    value_subject: str  # "The two models'", "The two dumps'"
    source: str  # where each count is: "for the {} model", "in `{}`"
    fix_count: str
    fix_shape: str
    fix_value: str
    nan_apart: bool  # NaN/Inf of an input has a note of its own, not a value difference


LIVE_WORDS = InputWords("The two", "The models'", "The two models'", "for the {} model",
                        "Give both models the same inputs, in the same order.", "Give both models the same data.",
                        "Check that both sides get the same data.", True)
DUMP_WORDS = InputWords("The dumps'", "The dumps'", "The two dumps'", "in `{}`",
                        "Dump both models with the same inputs, in the same order.",
                        "Dump both models with the same data.", "Check that both sides got the same data.", False)


def compare_input_arrays(a, b, labels: Tuple[str, str], sources: Tuple[str, str], notes: List[str],
                         words: InputWords) -> None:
    """Same number and shapes of input values (else an error naming the first); a difference of
    values is noted, not refused. ``a``/``b``: (id path, array or None, dtype name) per leaf."""
    if len(a) != len(b):
        raise PadiffError(
            f"{words.count_subject} inputs hold different numbers of values: {len(a)} "
            f"{words.source.format(sources[0])}, {len(b)} {words.source.format(sources[1])}. {words.fix_count}")
    for (ia, xa, da), (_, xb, db) in zip(a, b):
        if xa is None or xb is None:
            continue
        name = show_id(ia, "input")
        if tuple(xa.shape) != tuple(xb.shape):
            raise PadiffError(
                f"{words.subject} inputs differ in shape at {name}: {list(xa.shape)} ({labels[0]}) vs "
                f"{list(xb.shape)} ({labels[1]}). {words.fix_shape}")
        if xa.size and xa.dtype.kind in "fc" and xb.dtype.kind in "fc":
            d = compare_arrays(xa, xb, tolerance_for(Options(), da, db))
            if not d.passed and not (words.nan_apart and d.problem == "nan"):
                notes.append(f"{words.value_subject} inputs differ at {name} (greatest difference {d.max_abs:.3g}): "
                             f"every layer will differ. {words.fix_value}")


def check_inputs(sides, inputs, notes: List[str]) -> list:
    """Same structure and shapes on both sides; a value difference is noted, not refused.
    Returns where each model's input holds NaN/Inf (``compare.nonfinite.NonFinite``), noted too."""
    leaves = []
    for side, inp in zip(sides, inputs):
        # a dict's values in order, named by key: input["x"]
        leaves.append([(i, *_leaf_array(side, leaf)) for i, leaf in flatten(inp, side.adapter.is_tensor)])
    labels = (sides[0].label, sides[1].label)
    compare_input_arrays(leaves[0], leaves[1], labels, labels, notes, LIVE_WORDS)
    found = []
    for side, leaf in zip(sides, leaves):
        x = nonfinite.first_in_inputs(side.label, [(i, arr) for i, arr, _ in leaf if arr is not None])
        if x is not None:
            found.append(x)
            notes.append(f"The {side.label} model's {x.what} holds {x.nan} NaN and {x.inf} Inf of {x.numel} values: "
                         "every value computed from it will be non-finite.")
    return found


# --- the user's functions and the run's own warnings ----------------------------------------------

def pair_of(value, what: str):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise PadiffError(f"{what} must be a pair [for_first_model, for_second_model], got {type(value).__name__}.")
    return list(value)


def check_callables(sides, loss_fns, optimizers, schedulers) -> None:
    """Each loss function is callable, each optimizer is one of its model's framework (or a
    no-argument function), each scheduler has ``step`` (or is a function): said before any
    model runs, not after the first backward."""
    for i, side in enumerate(sides):
        which = _ORDINAL[i]
        if loss_fns is not None and not callable(loss_fns[i]):
            raise PadiffError(f"loss_fn[{i}] (for the {which} model, {side.label}) is a {type(loss_fns[i]).__name__}, "
                              "not a function: a loss_fn takes the model's output and returns a scalar tensor.")
        if optimizers is not None:
            opt = optimizers[i]
            if not side.adapter.is_optimizer(opt) and not callable(opt):
                raise PadiffError(f"optimizer[{i}] (for the {which} model, {side.label}) is a {type(opt).__name__}: "
                                  "pass an optimizer of its framework or a no-argument function that updates the "
                                  "weights.")
        if schedulers is not None:
            sched = schedulers[i]
            if not hasattr(sched, "step") and not callable(sched):
                raise PadiffError(f"scheduler[{i}] (for the {which} model, {side.label}) is a {type(sched).__name__}: "
                                  "pass a learning-rate scheduler with .step(), or a no-argument function.")


def random_layers(side: Side) -> List[str]:
    """Layers in train mode that draw random numbers (dropout): their outputs cannot agree."""
    found = []
    for _, _, path, layer in layer_tree(side):
        p = side.adapter.random_layer_p(layer)
        if p and p > 0 and side.adapter.is_training(layer):
            found.append(f"{path} (p={p:g})")
    return found


def random_layer_note(side: Side, dumped: bool = False) -> Optional[str]:
    """The note of a model with random layers in train mode; None without any. ``dumped``:
    worded for one model dumped on its own."""
    rnd = random_layers(side)
    if not rnd:
        return None
    listed = f"{', '.join(rnd[:3])}{', ...' if len(rnd) > 3 else ''}"
    if dumped:
        return (f"The {side.label} model is in train mode with random layers ({listed}): their outputs cannot agree "
                "with another run. Call .eval() on the model, or set their drop probability to 0, before dumping.")
    return (f"The {side.label} model is in train mode with random layers ({listed}): their outputs cannot agree. "
            "Call .eval() on both models, or set their drop probability to 0, before comparing.")


def training_options(opts: Options, use_loss: bool, use_opt: bool, notes: List[str], dumped: bool = False,
                     **more) -> Options:
    """The options of the steps to run: one step without an optimizer (each would repeat the
    first; said in a note), and whether a loss function and an optimizer were given."""
    if opts.steps > 1 and not use_opt:
        if dumped:
            notes.append(f"steps={opts.steps} without an optimizer would repeat the same step: padiff dumped 1 step. "
                         "Pass optimizer=... to train several steps.")
        else:
            notes.append(f"steps={opts.steps} without an optimizer would repeat the same step: padiff ran 1 step. "
                         "Pass optimizer=[opt_for_first, opt_for_second] to train several steps.")
    return replace(opts, use_loss=use_loss, use_opt=use_opt, steps=opts.steps if use_opt else 1, **more)


def refuse_single_step(opts: Options, recorded: bool) -> None:
    """single_step needs both live models in one process: refused by ``padiff.dump`` and, for
    ``recorded`` dumps, by ``compare_dumps``."""
    if not opts.single_step:
        return
    if recorded:
        raise PadiffError("single_step runs the tested model's layers on the reference's inputs, which needs both "
                          "live models: use padiff.auto_diff for it. Dumps compare every layer as recorded.")
    raise PadiffError(
        "single_step runs the tested model's layers on the reference model's inputs, so it needs both "
        "models in one process: use padiff.auto_diff for it, and dump without single_step.")
