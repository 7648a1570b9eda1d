"""Conversion rules: how the state of one layer class becomes the state of another.

A rule is data plus one small function (the seeds call it a *special init*)::

    from padiff import register_rule
    from padiff.weights.rules import Converted, RuleError

    def my_scale(src, dst, *, src_kind, dst_kind):
        # src: [(name, ndarray)] of the torch layer; dst: [(name, shape)] of the paddle layer
        (_, w), = src
        (name, shape), = dst
        if tuple(w.shape[::-1]) != tuple(shape):
            raise RuleError(f"{src_kind}.w {list(w.shape)} does not fit {dst_kind}.{name} {list(shape)}")
        t = lambda a: a.T                      # also applied to gradients when comparing
        return [Converted(name, "w", t(w), "transposed", t)]

    register_rule("TorchScale", "PaddleScale", my_scale)

``convert(src, dst, *, src_kind, dst_kind)`` receives the source layer's tensors (the weight
source: the torch model, or the first model of one framework) and the destination layer's
expected names and shapes, both in registration order, and returns one :class:`Converted`
per destination tensor (or raises :class:`RuleError` naming the tensors). ``transform`` maps
a source-layout array to the destination layout; padiff also uses it to compare gradients
and updated weights, so it must do the same thing the rule did to the value.

One destination tensor may be made from several source tensors of the layer: give their
names as a tuple, and ``transform`` takes a list of arrays in that order. padiff then compares
the destination's gradient (and its value after an optimizer step) against the same fusion
of the sources' gradients (values)::

    def halves(src, dst, *, src_kind, dst_kind):
        # torch: w1 [3, 5] and w2 [4, 5] ([out, in]); paddle: kernel [5, 7] ([in, out])
        s = dict(src)
        (name, shape), = dst
        fuse = lambda arrays: np.concatenate(arrays).T
        return [Converted(name, ("w1", "w2"), fuse([s["w1"], s["w2"]]), "fused", fuse)]

The other way round (one source split into several destinations) needs nothing new: each
destination's ``Converted`` names the one source and slices it. Fused projections between
separate Linears (``q_proj``, ``k_proj``, ``v_proj`` as layers of their own) and one fused
Linear need no rule: the structural matcher pairs them and ``fused.py`` finds their layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import PadiffError

# (name, array) for the source; (name, shape) for the destination.
SrcState = Sequence[Tuple[str, np.ndarray]]
DstSpec = Sequence[Tuple[str, Tuple[int, ...]]]


class RuleError(Exception):
    """A rule cannot convert this pair; the message names the tensors and shapes."""

    def __init__(self, message: str, src_name: str = "", dst_name: str = ""):
        super().__init__(message)
        self.src_name = src_name
        self.dst_name = dst_name


def _same(a: np.ndarray) -> np.ndarray:
    return a


@dataclass
class Converted:
    """One destination tensor's value and how it is made from the source layer's tensors.

    ``src_name`` names one source tensor, or several (a tuple or list: a fused destination,
    ``("q.weight", "k.weight", "v.weight")``); ``src_names`` always holds them all and
    ``src_name`` the first. ``transform`` maps source-layout values to the destination
    layout: it takes one array for one source, a list of arrays (in ``src_names`` order) for
    several. padiff applies it to gradients and updated weights too (:meth:`apply`)."""

    dst_name: str
    src_name: Union[str, Sequence[str]]
    array: np.ndarray
    note: str = ""  # "", "transposed", "renamed", "split", "fused", ...
    # Maps a source-layout array (a list of them for several sources) to the destination layout.
    transform: Callable = staticmethod(_same)
    src_names: Tuple[str, ...] = ()
    fused: Any = None  # the fused.FusedGroup whose layout this conversion follows (set by padiff)
    fused_part: int = -1  # which part of that group this destination is (a fused source split)

    def __post_init__(self):
        if not isinstance(self.src_name, str):
            self.src_names = tuple(self.src_name)
            if not self.src_names:
                raise RuleError(f"Converted(`{self.dst_name}`, ...) names no source tensor.", "", self.dst_name)
            self.src_name = self.src_names[0]
        elif not self.src_names:
            self.src_names = (self.src_name,)
        else:
            self.src_names = tuple(self.src_names)
            self.src_name = self.src_names[0]

    @property
    def several(self) -> bool:
        """True when the destination is made from several source tensors."""
        return len(self.src_names) > 1

    def apply(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The transform on source-layout values, one per name in ``src_names``."""
        if len(arrays) != len(self.src_names):
            raise ValueError(f"{len(self.src_names)} source value(s) expected for `{self.dst_name}`, got {len(arrays)}")
        return self.transform(list(arrays)) if self.several else self.transform(arrays[0])

    def renamed(self, src_prefix: str, dst_prefix: str) -> "Converted":
        """The same conversion with every name below a prefix (a pair converted inside a larger one)."""
        join = lambda p, n: f"{p}.{n}" if p else n
        return replace(self, src_name=tuple(join(src_prefix, n) for n in self.src_names), src_names=(),
                       dst_name=join(dst_prefix, self.dst_name))


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.T)


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _names(items) -> str:
    return ", ".join(n for n, _ in items) or "none"


def in_order(src: SrcState, dst: DstSpec, *, src_kind: str, dst_kind: str,
             transpose: Sequence[str] = ()) -> List[Converted]:
    """The default rule: the i-th source tensor goes to the i-th destination tensor.
    Source tensors whose last name is in ``transpose`` (or matches it, for a compiled
    regular expression) are 2-D and transposed (Linear weights: torch stores [out, in],
    paddle [in, out]), whatever their shape, square ones included."""
    if len(src) != len(dst):
        raise RuleError(
            f"{src_kind} has {len(src)} parameters/buffers ({_names(src)}) but "
            f"{dst_kind} has {len(dst)} ({_names(dst)})."
        )
    out = []
    for (sname, arr), (dname, dshape) in zip(src, dst):
        flip = arr.ndim == 2 and any(
            (t.fullmatch(_last(sname)) if hasattr(t, "fullmatch") else t == _last(sname)) for t in transpose)
        out.append(_one(sname, arr, dname, dshape, src_kind, dst_kind, flip,
                        "renamed" if _last(sname) != _last(dname) else ""))
    return out


def _one(sname, arr, dname, dshape, src_kind, dst_kind, flip=False, note=""):
    expected = tuple(arr.shape[::-1]) if flip else tuple(arr.shape)
    if expected != tuple(dshape):
        raise RuleError(
            f"Shape of param `{sname}` in {src_kind} and param `{dname}` in {dst_kind} is not the same. "
            f"{list(expected)} vs {list(dshape)}" + (" (after transposing the Linear weight)" if flip else ""),
            sname, dname,
        )
    if flip:
        return Converted(dname, sname, _transpose(arr), "transposed", _transpose)
    return Converted(dname, sname, arr, note)


def renamed(src: SrcState, dst: DstSpec, *, src_kind: str, dst_kind: str, names: Dict[str, str],
            transpose: Sequence[str] = ()) -> List[Converted]:
    """Pair tensors by name: ``names`` maps a source name to its destination name
    (``{"running_mean": "_mean"}``); other names must be equal on both sides."""
    by_dst = {}
    for sname, arr in src:
        dname = names.get(sname, sname)
        by_dst[dname] = (sname, arr)
    out = []
    for dname, dshape in dst:
        if dname not in by_dst:
            raise RuleError(
                f"{dst_kind} has `{dname}` but {src_kind} has no tensor for it (it has: {_names(src)}).",
                "", dname)
        sname, arr = by_dst.pop(dname)
        out.append(_one(sname, arr, dname, dshape, src_kind, dst_kind, sname in transpose and arr.ndim == 2,
                        "renamed" if sname != dname else ""))
    if by_dst:
        left = ", ".join(s for s, _ in by_dst.values())
        first = next(iter(by_dst.values()))[0]
        raise RuleError(f"{src_kind} has {left}, which {dst_kind} has no place for (it has: {_names(dst)}).",
                        first, "")
    return out


@dataclass(frozen=True)
class Rule:
    src_class: str  # class name, or "*"
    dst_class: str
    convert: Callable[..., List[Converted]]
    cross_framework_only: bool = True
    description: str = ""
    shipped: bool = False


_RULES: List[Rule] = []  # the user's rules, the most recent first; shipped ones are made per pair


def register_rule(src_class, dst_class, convert: Optional[Callable[..., List[Converted]]] = None,
                  *, cross_framework_only: bool = False, description: str = ""):
    """Register how to copy a ``src_class`` layer (the weight source: the torch model, or
    the first model of one framework) into a ``dst_class`` layer. Classes are given as
    classes or class names; ``"*"`` as ``dst_class`` matches any class.

    ``convert(src, dst, src_kind=..., dst_kind=...)`` gets ``src`` as ``[(name, ndarray)]``
    and ``dst`` as ``[(name, shape)]`` and returns a list of :class:`Converted`, one per
    destination tensor. Later registrations win over earlier ones, and over padiff's own. Without
    ``convert`` this returns a decorator. ``assign_weight``, ``auto_diff``, ``LayerMap.auto`` and
    ``padiff convert`` all use the rule.
    """
    def _name(c):
        return c if isinstance(c, str) else getattr(c, "__name__", str(c))

    def do(fn):
        if not callable(fn):
            raise PadiffError(f"register_rule({_name(src_class)!r}, {_name(dst_class)!r}, ...) needs a function "
                              f"convert(src, dst, *, src_kind, dst_kind), got {type(fn).__name__}.")
        _RULES.insert(0, Rule(_name(src_class), _name(dst_class), fn, cross_framework_only, description))
        return fn

    if convert is None:
        return do
    do(convert)
    return None


def find_rule(src_class: str, dst_class: str, src_ad, dst_ad) -> Optional[Rule]:
    """The rule for this pair of classes of the two adapters' frameworks: an exact one first,
    then one with a wildcard; the user's before padiff's own (shipped) ones."""
    cross = src_ad.name != dst_ad.name
    exact = wild = None
    for rule in _RULES + (shipped_rules(src_ad, dst_ad) if cross else []):
        if rule.cross_framework_only and not cross:
            continue
        if rule.src_class == src_class and rule.dst_class == dst_class:
            exact = exact or rule
        elif rule.src_class in (src_class, "*") and rule.dst_class in (dst_class, "*"):
            wild = wild or rule
    return exact or wild


def rules() -> List[Rule]:
    """Every rule the user registered, the most recent first."""
    return list(_RULES)


def counterpart_class(class_name: str, ad, other_ad) -> str:
    """The class of ``other_ad``'s framework a ``class_name`` layer of ``ad``'s stands for: the
    first of its kind in its ``weight_tables.layer_kinds`` (``BatchNorm2D`` -> ``BatchNorm2d``); the name
    itself for a class no table lists."""
    kind = ad.weight_tables.layer_kinds.get(class_name)
    others = other_ad.weight_tables.layer_kinds
    return next((c for c, k in others.items() if k == kind), class_name) if kind else class_name


# --- class families: which classes of the two frameworks are "the same kind" ---------------

def family(class_name: str) -> str:
    """A framework-neutral kind for a layer class: ``Conv2d``/``Conv2D`` -> ``conv2``,
    ``BatchNorm2d``/``SyncBatchNorm``/``BatchNorm2D`` -> ``batchnorm``, ``MultiheadAttention``/
    ``MultiHeadAttention`` -> ``multiheadattention``; other names are lower-cased."""
    n = class_name.lower()
    for prefix in ("nondynamicallyquantizable", "lazy", "sync"):
        if n.startswith(prefix):
            n = n[len(prefix):]
    n = re.sub(r"([123])d", r"\1", n)
    m = re.fullmatch(r"conv([123])transpose", n)
    if m:
        n = "convtranspose" + m.group(1)
    if n.startswith("batchnorm"):
        return "batchnorm"
    if n.startswith("instancenorm"):
        return "instancenorm"
    return {"simplernn": "rnn"}.get(n, n)


# --- shipped rules: recipes between kinds, the names from the two adapters' tables ------------
#
# A recipe says which kinds of layer it converts (the frameworks' ``layer_kinds``) and makes the
# convert function for a pair of frameworks from their weight tables (``WeightTables``: tensor
# names, Linear layouts); ``shipped_rules`` turns the recipes into rules between the two
# frameworks' classes.

def _flips(src, dst) -> bool:
    """Linear-like weights are transposed when the two frameworks store them the other way round."""
    return src.linear_weight_layout != dst.linear_weight_layout


def _linear(src_t, dst_t):
    transpose = ("weight",) if _flips(src_t, dst_t) else ()

    def convert(src, dst, *, src_kind, dst_kind):
        return in_order(src, dst, src_kind=src_kind, dst_kind=dst_kind, transpose=transpose)
    return convert


def _renaming(*roles):
    """Tensors paired by name, the ``roles`` (neutral names) renamed from one table to the other:
    Conv and ConvTranspose weights have one layout in both frameworks ([out, in/groups, *k] and
    [in, out/groups, *k]), LayerNorm/GroupNorm/Embedding likewise; BatchNorm statistics, the
    InstanceNorm scale and the PReLU weight differ in name only."""
    def make(src_t, dst_t):
        s, d = src_t.tensor_names, dst_t.tensor_names
        names = {s[r]: d[r] for r in roles if r in s and r in d}

        def convert(src, dst, *, src_kind, dst_kind):
            return renamed(src, dst, src_kind=src_kind, dst_kind=dst_kind, names=names)
        return convert
    return make


def _rnn(src_t, dst_t):
    # Both frameworks keep gate order (LSTM i,f,g,o; GRU r,z,n) and the same input/hidden weight
    # and bias layouts, layer by layer and direction by direction. The LSTM projection (torch's
    # weight_hr_l{k} [proj, hidden], paddle's cell weight_ho [hidden, proj]) is stored the other
    # way round; the flat names then shift, so tensors pair in order, not by name.
    pattern = src_t.tensor_names.get("rnn.projection")
    transpose = (re.compile(pattern),) if pattern and _flips(src_t, dst_t) else ()

    def convert(src, dst, *, src_kind, dst_kind):
        return in_order(src, dst, src_kind=src_kind, dst_kind=dst_kind, transpose=transpose)
    return convert


def _attention(src_t, dst_t):
    names = {k.split(".", 1)[1]: v for k, v in src_t.tensor_names.items() if k.startswith("attention.")}
    if "packed_weight" not in names:
        return None  # the source framework has no packed attention layer
    flips = _flips(src_t, dst_t)

    def convert(src, dst, *, src_kind, dst_kind):
        return _mha(src, dst, src_kind=src_kind, dst_kind=dst_kind, names=names, flip_weights=flips)
    return convert


_BATCHNORMS = ("batchnorm1d", "batchnorm2d", "batchnorm3d", "syncbatchnorm")
# (source kinds, destination kinds or "*", recipe, description), in the order they were written.
RECIPES = [
    (("linear",), ("linear",), _linear, "Linear: weight transposed where the layouts differ ([out, in] / [in, out])"),
    *[r for n in (1, 2, 3) for r in (
        ((f"conv{n}d",), (f"conv{n}d",), _renaming(), "Conv: same layout [out, in/groups, *k]"),
        ((f"convtranspose{n}d",), (f"convtranspose{n}d",), _renaming(),
         "ConvTranspose: same layout [in, out/groups, *k]"),
        ((f"instancenorm{n}d",), (f"instancenorm{n}d",), _renaming("instancenorm.scale"),
         "InstanceNorm: scale renamed"))],
    (_BATCHNORMS, _BATCHNORMS, _renaming("batchnorm.mean", "batchnorm.variance"),
     "BatchNorm: running statistics renamed (a step counter the other side lacks dropped)"),
    *[((k,), (k,), _renaming(), f"{k}: same names and layout") for k in ("layernorm", "groupnorm", "embedding")],
    (("prelu",), ("prelu",), _renaming("prelu.weight"), "PReLU: weight renamed"),
    (("lstm",), ("lstm",), _rnn, "LSTM: same gate order (i, f, g, o); the projection transposed"),
    (("gru",), ("gru",), _rnn, "GRU: same gate order (r, z, n)"),
    (("rnn",), ("rnn",), _rnn, "RNN: same layout"),
    (("multiheadattention",), "*", _attention,
     "MultiheadAttention: packed q/k/v split into projections, all transposed"),
]
_SHIPPED: Dict[Tuple[str, str], List[Rule]] = {}


def shipped_rules(src_ad, dst_ad) -> List[Rule]:
    """padiff's own rules from ``src_ad``'s framework into ``dst_ad``'s: every recipe between
    every pair of their classes of its kinds (made once per pair of frameworks)."""
    key = (src_ad.name, dst_ad.name)
    if key not in _SHIPPED:
        src_t, dst_t = src_ad.weight_tables, dst_ad.weight_tables
        out = []
        for src_kinds, dst_kinds, recipe, description in RECIPES:
            convert = recipe(src_t, dst_t)
            if convert is None:
                continue
            dst_classes = ["*"] if dst_kinds == "*" else [c for c, k in dst_t.layer_kinds.items() if k in dst_kinds]
            out += [Rule(s, d, convert, True, description, True)
                    for s, k in src_t.layer_kinds.items() if k in src_kinds for d in dst_classes]
        _SHIPPED[key] = out
    return _SHIPPED[key]


def _slice_t(lo: int, hi: int, flip: bool):
    if flip:
        return lambda a: np.ascontiguousarray(a[lo:hi].T)
    return lambda a: np.ascontiguousarray(a[lo:hi])


def _groups(dst: DstSpec):
    """Destination tensors grouped by their layer prefix, in order: [(prefix, [(name, shape)])]."""
    groups: List[Tuple[str, list]] = []
    for name, shape in dst:
        prefix = name.rsplit(".", 1)[0] if "." in name else ""
        if not groups or groups[-1][0] != prefix:
            groups.append((prefix, []))
        groups[-1][1].append((name, shape))
    return groups


def _mha(src, dst, *, src_kind, dst_kind, names, flip_weights=True):
    """A packed attention layer (torch ``nn.MultiheadAttention``: packed ``in_proj_weight``
    [3E, E] or separate q/k/v weights, and ``out_proj``; ``names`` are its tensor names by neutral
    name) into paddle ``nn.MultiHeadAttention`` or any layer holding the projections as Linears:
    four (q, k, v, out, in that order) or two (a fused qkv [E, 3E] and out). Weights are
    transposed (``flip_weights``) to the destination's Linear layout."""
    s = dict(src)
    packed, packed_b = names["packed_weight"], names.get("packed_bias")
    if names.get("bias_k") in s or names.get("bias_v") in s:
        raise RuleError(f"{src_kind} was built with add_bias_kv=True, which {dst_kind} has no place for: "
                        "register your own rule for this pair.", names["bias_k"], "")
    singles = tuple(names[f"{p}_weight"] for p in "qkv")
    if packed in s:
        e = s[packed].shape[0] // 3
        qkv_w = [(packed, 0, e), (packed, e, 2 * e), (packed, 2 * e, 3 * e)]
    elif all(k in s for k in singles):
        e = s[singles[0]].shape[0]
        qkv_w = [(k, 0, e) for k in singles]
    else:
        raise RuleError(f"{src_kind} has neither {packed} nor {'/'.join(n[0] for n in singles)}{singles[0][1:]} (it has: {_names(src)}).")
    qkv_b = [(packed_b, 0, e), (packed_b, e, 2 * e), (packed_b, 2 * e, 3 * e)] if packed_b in s else None
    out_w = (names["out_weight"], 0, e)
    out_b = (names["out_bias"], 0, e) if names["out_bias"] in s else None
    groups = _groups(dst)
    if len(groups) == 4:
        plan = [(qkv_w[i], qkv_b[i] if qkv_b else None) for i in range(3)] + [(out_w, out_b)]
    elif len(groups) == 2 and packed in s:
        plan = [((packed, 0, 3 * e), (packed_b, 0, 3 * e) if qkv_b else None), (out_w, out_b)]
    else:
        raise RuleError(
            f"{src_kind} packs q, k, v and out projections; {dst_kind} should hold them as four Linears "
            f"(q, k, v, out, in that order) or two (fused qkv, out), but its tensors are {_names(dst)}.")
    out = []
    for (prefix, tensors), (wsrc, bsrc) in zip(groups, plan):
        wants = [wsrc] + ([bsrc] if bsrc else [])
        if len(tensors) != len(wants):
            raise RuleError(
                f"`{prefix}` in {dst_kind} has {len(tensors)} tensors ({_names(tensors)}) but the matching "
                f"projection of {src_kind} has {len(wants)} ({', '.join(w[0] for w in wants)}): "
                "both must have a bias, or neither.", wants[0][0], tensors[0][0])
        out += [_projection(s[sname], sname, lo, hi, dname, dshape, src_kind, dst_kind, flip_weights)
                for (dname, dshape), (sname, lo, hi) in zip(tensors, wants)]
    return out


def _projection(arr, sname, lo, hi, dname, dshape, src_kind, dst_kind, flip_weights) -> Converted:
    """Rows ``lo:hi`` of a packed attention tensor as one projection's tensor."""
    flip = arr.ndim == 2 and flip_weights
    t = _slice_t(lo, hi, flip)
    value = t(arr)
    if tuple(value.shape) != tuple(dshape):
        part = f"{sname}[{lo}:{hi}]" + (" transposed" if flip else "")
        raise RuleError(f"Shape of `{part}` in {src_kind} and param `{dname}` in {dst_kind} is not "
                        f"the same. {list(value.shape)} vs {list(dshape)}", sname, dname)
    note = "split" + (" + transposed" if flip else "") if (hi - lo) != arr.shape[0] else \
        ("transposed" if flip else "")
    return Converted(dname, sname, value, note, t)
