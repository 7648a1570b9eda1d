"""The framework-neutral record of one model run: a tree of calls with their tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


@dataclass
class TensorRecord:
    """One recorded value: a numpy copy of a tensor, a plain (non-tensor) value, or the type
    name of an object.

    Plain values (None, numbers, strings, numeric numpy arrays: ``structure.is_plain``) are
    kept and compared. Any other value is an *object* (a cache, a config): only its type name
    is kept (``is_object``, ``dtype``), so a record never holds on to the user's objects, a
    dump never stores them, and nothing calls their ``==``."""

    array: Optional[np.ndarray]  # None for non-tensor values
    dtype: str  # the framework's dtype name ("float32", "bfloat16", ...) or the Python type
    shape: Tuple[int, ...] = ()
    value: Any = None  # the plain value when array is None
    is_tensor: bool = True
    is_object: bool = False  # a non-tensor, non-plain value: only its type name (dtype) is kept

    @classmethod
    def plain(cls, value) -> "TensorRecord":
        if isinstance(value, (bool, int, float, complex, np.generic)):
            return cls(np.asarray(value), type(value).__name__, (), value, False)
        if isinstance(value, np.ndarray) and value.dtype != object:
            return cls(value.copy(), str(value.dtype), tuple(value.shape), None, False)
        if value is None or isinstance(value, (str, bytes)):
            return cls(None, type(value).__name__, (), value, False)
        return cls.object(type(value).__name__)

    def __repr__(self) -> str:
        if self.is_tensor:
            held = "" if self.array is not None else ", dropped"
            return f"TensorRecord({self.dtype}{list(self.shape)}{held})"
        if self.is_object:
            return f"TensorRecord(object {self.dtype})"
        return f"TensorRecord({self.value!r})" if self.array is None else f"TensorRecord({self.dtype} number)"

    @classmethod
    def object(cls, type_name: str) -> "TensorRecord":
        return cls(None, type_name, (), None, False, True)

    @property
    def kind(self) -> str:
        """"tensor", "number" (a plain number or numeric array: compared as an array),
        "text" (str/bytes: compared with ==), "none" or "object" (never compared)."""
        if self.is_tensor:
            return "tensor"
        if self.is_object:
            return "object"
        if self.array is not None:
            return "number"
        return "none" if self.value is None else "text"


@dataclass(frozen=True)
class SourceFrame:
    filename: str
    lineno: int
    function: str

    def line_text(self) -> str:
        import linecache

        return linecache.getline(self.filename, self.lineno).strip()

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


class LazyFrames(Sequence):
    """A node's user frames, kept as (code object, line number) pairs when recorded and made
    into :class:`SourceFrame` objects only when something reads them (a report of a failure):
    the recording of every call stays cheap. Reads like the tuple of SourceFrames it stands
    for (indexing, slicing, len, iteration, truth, ==)."""

    __slots__ = ("_raw", "_frames")

    def __init__(self, raw: Tuple[Tuple[Any, int], ...]):
        self._raw = raw
        self._frames: Optional[Tuple[SourceFrame, ...]] = None

    def resolved(self) -> Tuple[SourceFrame, ...]:
        if self._frames is None:
            self._frames = tuple(SourceFrame(code.co_filename, line, code.co_name) for code, line in self._raw)
            self._raw = ()
        return self._frames

    def __getitem__(self, i):
        return self.resolved()[i]

    def __len__(self) -> int:
        return len(self._raw) if self._frames is None else len(self._frames)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other) -> bool:
        if isinstance(other, LazyFrames):
            other = other.resolved()
        return self.resolved() == tuple(other) if isinstance(other, (tuple, list)) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self.resolved())


@dataclass(eq=False)
class Node:
    """One call of a layer ("net") or of a framework function ("api")."""

    index: int  # position in call (enter) order within its trace
    kind: str  # "net" or "api"
    name: str  # layer class name or API name
    path: str  # dotted path of the layer: "SimpleModule.block.linear1"
    layer_key: int  # identity of the layer object within the run (id())
    parent: Optional["Node"] = None
    children: List["Node"] = field(default_factory=list)
    enter_seq: int = -1
    exit_seq: int = -1
    has_params: bool = False
    outputs: List[Tuple[str, TensorRecord]] = field(default_factory=list)
    call_args: Any = None  # (args, kwargs) with tensors as TensorRecords; single-step mode only
    out_skeleton: Any = None  # the output, nested as returned, likewise
    grad_out: Dict[str, TensorRecord] = field(default_factory=dict)
    grad_in: Dict[str, TensorRecord] = field(default_factory=dict)
    input_ids: List[str] = field(default_factory=list)  # id paths of the inputs that record a gradient
    # id path -> how many innermost calls (atomic layers, framework calls) of the run read that
    # input: its recorded gradient is the sum over all of them (None: not counted, older dumps)
    input_uses: Optional[Dict[str, int]] = None
    output_grad_ids: List[str] = field(default_factory=list)  # id paths of the outputs that record one
    in_prints: Optional[Tuple[float, ...]] = None  # framework calls: norms of the floating inputs
    # user's frames, outermost first, ending at the call (a LazyFrames while recording)
    frames: Sequence = ()
    call_count: int = 0  # how many times this layer was called before this call

    def __repr__(self) -> str:
        return (f"Node({self.kind} {self.label()!r}, {self.name}, {len(self.outputs)} output(s), "
                f"{len(self.children)} child call(s))")

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    @property
    def depth(self) -> int:
        d, p = 0, self.parent
        while p is not None:
            d, p = d + 1, p.parent
        return d

    def label(self) -> str:
        """The dotted path, with the API name for framework calls and the call number when a
        layer or API runs more than once."""
        text = self.path if self.kind == "net" else f"{self.path} > {self.name}"
        return text if self.call_count == 0 else f"{text} (call {self.call_count + 1})"


@dataclass
class Trace:
    """A run of one model: its framework, the root call, and every node in call order.
    ``api_spellings`` is the framework's table of operation names (its adapter's), by which
    framework calls pair with the other model's."""

    framework: str
    model_name: str
    root: Optional[Node] = None
    nodes: List[Node] = field(default_factory=list)
    loss: Optional[TensorRecord] = None
    api_spellings: Dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Trace({self.framework} {self.model_name!r}, {len(self.nodes)} calls)"

    def drop_arrays(self) -> None:
        """Free the recorded values once compared; shapes, dtypes and the tree stay."""
        for node in self.nodes:
            for records in (node.outputs, list(node.grad_out.items()), list(node.grad_in.items())):
                for _, rec in records:
                    if rec.is_tensor:
                        rec.array = None
            node.call_args = None
            node.out_skeleton = None

    def exit_order(self) -> List[Node]:
        return sorted((n for n in self.nodes if n.exit_seq >= 0), key=lambda n: n.exit_seq)

    def backward_events(self) -> List[Tuple[Node, str]]:
        """The order in which backward reaches each node: the forward timeline reversed.
        An "exit" event carries the node's output gradient, an "enter" event its input
        gradient; so a layer whose own backward is wrong is met before its callers."""
        events = []
        for n in self.nodes:
            if n.enter_seq >= 0:
                events.append((n.enter_seq, n, "enter"))
            if n.exit_seq >= 0:
                events.append((n.exit_seq, n, "exit"))
        events.sort(key=lambda e: e[0], reverse=True)
        return [(n, kind) for _, n, kind in events]
