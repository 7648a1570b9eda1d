"""Recording a model run into a :class:`Trace`, through a framework adapter.

A :class:`Recorder` is a context manager: it installs forward hooks on every layer it
traces on entry and removes every hook (forward and gradient) on exit, whatever happened
in between.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import PadiffError, PadiffInternalError
from ..structure import flatten, key_text
from .api import ApiPatcher, api_targets
from .spill import Spill
from .trace import LazyFrames, Node, SourceFrame, TensorRecord, Trace

_PADIFF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_internal_file(filename: str, prefixes) -> bool:
    if filename.startswith(_PADIFF_DIR) or filename.startswith("<"):
        return True
    return any(p in filename for p in prefixes)


# The optimisations of the recording's fixed cost, each with the plain version it replaces
# kept beside it: tests/test_speed_equivalence.py turns each off and checks that the findings
# and the source lines shown are the same.
# reuse: the memory and spill files of a run kept for the next (record/arena.py, record/spill.py;
# used by run/live.py)
FAST = {"frames": True, "leaves": True, "reuse": True}

# code object -> 0 (the user's), 1 (a framework's) or 2 (padiff's), decided once per code object
_CODE_KIND: Dict[tuple, Dict[object, int]] = {}


def user_frames(internal_dirs, stop_frame=None, limit: int = 12):
    """The caller's stack trimmed to the user's own frames, outermost first, from the model
    call (``stop_frame``, padiff's own frame that called the model) inwards: a
    :class:`LazyFrames` of (code object, line number) pairs, made into source frames only
    when a report reads them."""
    if not FAST["frames"]:
        return _user_frames_plain(internal_dirs, stop_frame, limit)
    return LazyFrames(_walk_frames(internal_dirs, stop_frame, limit, None, sys._getframe(2))[0])


def _walk_frames(internal_dirs, stop_frame, limit, within, f):
    """(user frames as (code, line) pairs, outermost first; anchor) from frame ``f`` up.

    Whether a code object is the user's is decided once. ``within``: (anchor, frames) of the
    innermost layer call still running, or None. Its anchor is the first frame that is not
    padiff's above its hook (the framework's frame that runs the layer): it stays on the stack,
    at the same line, while the layer runs, and so does everything above it; a walk that
    reaches it stops there and takes the layer's own frames for the rest (the same frames a
    whole walk finds). The anchor returned is this call's, for the calls it makes."""
    kinds = _CODE_KIND.get(internal_dirs)
    if kinds is None:
        kinds = _CODE_KIND[internal_dirs] = {}
    elif len(kinds) > 100_000:  # code made at run time (exec, lambdas in loops) does not pile up
        kinds.clear()
    raw = []
    anchor = None
    seeking = True  # the anchor is the first frame that is not padiff's
    target = within[0] if within is not None else None
    while f is not None and f is not stop_frame and len(raw) < limit:
        if f is target:
            raw.reverse()
            return (within[1] + tuple(raw))[-limit:], (anchor if not seeking else target)
        code = f.f_code
        kind = kinds.get(code)
        if kind is None:
            fn = code.co_filename
            kind = kinds[code] = 2 if fn.startswith(_PADIFF_DIR) else int(_is_internal_file(fn, internal_dirs))
        if seeking and kind != 2:
            seeking = False
            anchor = f if kind == 1 else None  # a user's frame moves on while the layer runs: no anchor
        if kind == 0:
            raw.append((code, f.f_lineno))
        f = f.f_back
    raw.reverse()
    return tuple(raw), anchor


def _user_frames_plain(internal_dirs, stop_frame=None, limit: int = 12, depth: int = 3):
    """:func:`user_frames` as it was: every frame's file name tested, SourceFrames made at once."""
    frames = []
    f = sys._getframe(depth)
    while f is not None and f is not stop_frame and len(frames) < limit:
        fn = f.f_code.co_filename
        if not _is_internal_file(fn, internal_dirs):
            frames.append(SourceFrame(fn, f.f_lineno, f.f_code.co_name))
        f = f.f_back
    frames.reverse()
    return tuple(frames)


_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def tensor_items(args, kwargs, is_tensor) -> list:
    """(id path, tensor) of each tensor among a call's arguments, exactly as
    :func:`~padiff.structure.flatten` of ``(args, kwargs)`` gives them: positional ones
    (``[0][i]``), then keyword ones (``[1]["name"]``). A flat call (tensors and plain scalars
    only, the common case) is read directly; anything nested goes through ``flatten``."""
    if FAST["leaves"] and type(args) is tuple and (kwargs is None or type(kwargs) is dict):
        out = []
        for i, v in enumerate(args):
            if is_tensor(v):
                out.append((f"[0][{i}]", v))
            elif not isinstance(v, _SCALARS):
                break
        else:
            for k, v in (kwargs or {}).items():
                if is_tensor(v):
                    out.append(("[1]" + key_text(k), v))
                elif not isinstance(v, _SCALARS):
                    break
            else:
                return out
    return [(p, leaf) for p, leaf in flatten((args, kwargs or {}), is_tensor) if is_tensor(leaf)]


def is_atomic(ad, layer) -> bool:
    """Whether a layer is compared and copied as a whole: a framework's own layer that has no
    sublayers (``Linear``, ``Conv2d``) or keeps state of its own beside them (torch's
    ``MultiheadAttention`` with its packed ``in_proj_weight``, paddle's ``LSTM``): its insides
    differ between frameworks. Every other layer with sublayers is walked into, whatever
    package defines it (``paddle.vision.models.ResNet``, ``TransformerEncoderLayer``,
    ``Sequential``)."""
    if not ad.is_builtin(layer):
        return False
    if not ad.named_children(layer):
        return True
    return bool(ad.own_params(layer) or ad.own_buffers(layer))


class LayerWalk:
    """The layers of a model that get traced, with their dotted paths.

    Atomic layers (:func:`is_atomic`: ``torch.nn.Linear``, torch's ``MultiheadAttention``)
    are leaves, compared as a whole; every other layer is walked into.
    """

    def __init__(self, adapter, model, root_name: str, stop_at: Callable = None):
        self.adapter = adapter
        self.layers: Dict[int, object] = {}
        self.paths: Dict[int, str] = {}
        self.order: List[int] = []
        self.innermost: set = set()  # keys of the layers whose sublayers are not traced
        self._walk(model, root_name, stop_at)

    def _walk(self, layer, path, stop_at):
        key = id(layer)
        if key in self.paths:
            return  # a shared layer keeps its first path
        self.layers[key] = layer
        self.paths[key] = path
        self.order.append(key)
        ad = self.adapter
        children = ad.named_children(layer)
        if not children or is_atomic(ad, layer) or (stop_at is not None and stop_at(layer)):
            self.innermost.add(key)
            return
        for name, child in children:
            self._walk(child, f"{path}.{name}", stop_at)

    def has_params(self, key: int) -> bool:
        layer = self.layers[key]
        return bool(self.adapter.all_params(layer))


class Recorder:
    """Records one model's forward (and, when asked, its gradients) into ``self.trace``.

    Use as ``with Recorder(...) as rec: out = rec.run(inputs)``; then run the backward
    inside the ``with`` so gradient hooks fire; everything is removed on exit.
    """

    def __init__(self, adapter, model, root_name: str, *, grads: bool, keep_inputs: bool = False,
                 stop_at: Callable = None, api: bool = False, extra_api: Sequence[str] = (), spill=None,
                 arrivals=None):
        self.adapter = adapter
        self.model = model
        self.grads = grads
        self.keep_inputs = keep_inputs
        self.api = api
        self.extra_api = tuple(extra_api)
        self._patcher = None
        self._in_api = False
        self._keep = (spill if spill is not None else Spill(None)).keep  # no budget: all in memory
        self.failure = None  # padiff's own error raised in one of its hooks (see _copy)
        self._arrived = arrivals.arrived if arrivals is not None else None  # told after each gradient
        self.walk = LayerWalk(adapter, model, root_name, stop_at)
        self.trace = Trace(adapter.name, root_name, api_spellings=dict(adapter.api_spellings))
        self._handles: List = []
        self._stack: List[Node] = []
        self._seq = 0
        self._calls: Dict[int, int] = {}
        self._active = False
        self._records: Dict[int, tuple] = {}
        self._api_calls: Dict[tuple, int] = {}
        self._grad_wanted: Dict[int, tuple] = {}
        # (id, version) of a tensor -> (weak reference, [innermost calls that read it]); ids are
        # reused once a tensor is freed, so a key whose tensor is gone starts a new count
        self._uses: Dict[tuple, tuple] = {}
        self._input_keys: List[tuple] = []  # (node, [(id path, its count)]) to read after the run
        self._run_frame = None
        # frames in files under the framework's own folders are not the user's
        self._internal = tuple(os.sep + d + os.sep for d in adapter.package_dirs)
        # per running layer call (beside self._stack): (anchor frame, its frames) for
        # _walk_frames; a frame is held only while its layer runs
        self._within: List[tuple] = []

    def _frames(self, opens: bool = False):
        """The user's frames of the call being recorded (called from a hook or _on_api_call);
        ``opens``: a layer call, whose anchor its own calls' walks stop at."""
        if not FAST["frames"]:
            return _user_frames_plain(self._internal, self._run_frame, 12, depth=3)
        within = self._within[-1] if self._within else None
        raw, anchor = _walk_frames(self._internal, self._run_frame, 12, within, sys._getframe(2))
        if opens:
            self._within.append((anchor, raw))
        return LazyFrames(raw)

    # --- context manager ---------------------------------------------------------------
    def __enter__(self):
        if self._active:
            raise PadiffInternalError("Recorder entered twice")
        self._active = True
        try:
            for key in self.walk.order:
                layer = self.walk.layers[key]
                pre, post = self._make_hooks(key)
                self._handles.extend(self.adapter.add_forward_hooks(layer, pre, post))
            if self.api:
                self._patcher = ApiPatcher(api_targets(self.adapter, self.extra_api), self._on_api_call)
                self._patcher.__enter__()
        except BaseException:
            self._remove_all()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._remove_all()
        return False

    def __del__(self):
        if getattr(self, "_handles", None):
            warnings.warn("padiff Recorder was never closed; removing its hooks now.")
            self._remove_all()

    def _remove_all(self):
        handles, self._handles = self._handles, []
        self._records.clear()
        self._grad_wanted.clear()
        patcher, self._patcher = self._patcher, None
        errors = []
        if patcher is not None:
            try:
                patcher.__exit__(None, None, None)
            except Exception as e:
                errors.append(e)
        for h in handles:
            try:
                self.adapter.remove_hook(h)
            except Exception as e:  # keep removing the rest; report after
                errors.append(e)
        self._active = False
        if errors:
            raise PadiffInternalError(f"could not remove {len(errors)} hooks: {errors[0]!r}")

    # --- running -------------------------------------------------------------------------
    def current_path(self) -> Optional[str]:
        return self._stack[-1].path if self._stack else None

    def run(self, call: Callable[[], object], side: str):
        """Run the model through ``call``; a model that raises becomes a PadiffError that names
        the innermost layer that was running."""
        self._run_frame = sys._getframe()
        try:
            return call()
        except PadiffError:
            raise
        except Exception as exc:
            where = self.current_path() or self.trace.model_name
            raise PadiffError(
                f"The {side} model raised {type(exc).__name__} inside layer `{where}`: {exc}\n"
                "Fix the model or its inputs and run again (the traceback above shows the line)."
            ) from exc
        finally:
            self._stack.clear()
            self._within.clear()
            self._run_frame = None
            for node, keys in self._input_keys:
                node.input_uses = {p: cell[0] for p, cell in keys}
            self._input_keys.clear()
            self._uses.clear()

    def _count_uses(self, items) -> None:
        """One more read of every tensor among the arguments of an innermost call
        (``items``: :func:`tensor_items` of its arguments)."""
        for _, leaf in items:
            self._use_cell(leaf)[0] += 1

    def _use_cell(self, tensor) -> list:
        """The read count of this tensor value (a one-item list, shared by every node that
        records it as an input)."""
        k = (id(tensor), self.adapter.version(tensor))
        hit = self._uses.get(k)
        if hit is None or hit[0]() is not tensor:
            try:
                hit = (weakref.ref(tensor), [0])
            except TypeError:  # no weak references: counted without the check
                hit = (lambda t=tensor: t, [0])
            self._uses[k] = hit
        return hit[1]

    # --- framework calls ---------------------------------------------------------------
    def _on_api_call(self, name, original, args, kwargs):
        if self._in_api or not self._stack:
            return original(*args, **kwargs)
        self._in_api = True  # nested calls, and padiff's own work below, are not recorded
        try:
            parent = self._stack[-1]
            count = self._api_calls.get((id(parent), name), 0)  # earlier calls of it in this layer call
            self._api_calls[(id(parent), name)] = count + 1
            node = Node(index=len(self.trace.nodes), kind="api", name=name, path=parent.path,
                        layer_key=-1, parent=parent, call_count=count)
            node.enter_seq = self._seq
            self._seq += 1
            node.frames = self._frames()
            ad = self.adapter
            items = tensor_items(args, kwargs, ad.is_tensor)
            node.in_prints = tuple(ad.fingerprint(t) for _, t in items if ad.is_floating(t))  # before an in-place op
            if parent.layer_key not in self.walk.innermost:  # inside an innermost layer: counted there
                self._count_uses(items)
            out = original(*args, **kwargs)
            node.exit_seq = self._seq
            self._seq += 1
            parent.children.append(node)
            self.trace.nodes.append(node)
            self._record_outputs(node, out)
            return out
        finally:
            self._in_api = False

    def _record_outputs(self, node: Node, output) -> None:
        ad = self.adapter
        leaves = [("", output)] if FAST["leaves"] and ad.is_tensor(output) else flatten(output, ad.is_tensor)
        for id_path, leaf in leaves:
            node.outputs.append((id_path, self._record(leaf)))
            if self.grads and ad.is_tensor(leaf) and ad.requires_grad(leaf):
                node.output_grad_ids.append(id_path)
                self._want_grad(leaf, node.grad_out, id_path)

    def _skeleton(self, value):
        """The call's arguments with every tensor replaced by its record (for re-running)."""
        ad = self.adapter
        if ad.is_tensor(value):
            return self._record(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._skeleton(v) for v in value) if not hasattr(value, "_fields") else \
                type(value)(*(self._skeleton(v) for v in value))
        if isinstance(value, dict):
            return {k: self._skeleton(v) for k, v in value.items()}
        return value

    # --- hooks ---------------------------------------------------------------------------
    def _record(self, value) -> TensorRecord:
        """One copy per tensor value: a layer's output is often its last framework call's
        output, or the next layer's input; while the tensor is alive and unchanged (same
        in-place version) its record is shared, not copied again."""
        ad = self.adapter
        if not ad.is_tensor(value):
            return TensorRecord.plain(value)
        key = id(value)
        version = ad.version(value)
        hit = self._records.get(key)
        if hit is not None and hit[0]() is value and hit[1] == version:
            return hit[2]
        rec = TensorRecord(self._copy(value), ad.dtype_name(value), ad.shape(value))
        try:
            self._records[key] = (weakref.ref(value), version, rec)
        except TypeError:  # a tensor type without weak references: do not share
            pass
        return rec

    def _copy(self, tensor):
        """The kept copy of a tensor's value: taken straight from its memory where the adapter
        can show it (into memory, or written to the spill file), else through ``to_numpy``."""
        view = self.adapter.host_view(tensor)
        try:
            if view is not None:
                return self._keep(view, view=True)
            return self._keep(self.adapter.to_numpy(tensor))
        except PadiffError as exc:  # a spill that cannot be written: a framework may wrap it on its way out
            self.failure = exc
            raise

    def _want_grad(self, tensor, store: dict, key: str) -> None:
        """Record ``tensor``'s gradient into ``store[key]``: one hook per tensor value, however
        many layers saw it, and one copy of its gradient shared by all of them. A tensor changed
        in place is a new value: a hook registered after the change gets its own gradient."""
        ident = (id(tensor), self.adapter.version(tensor))  # after an in-place op: a new value
        wanted = self._grad_wanted.get(ident)
        if wanted is not None and wanted[0]() is tensor:
            wanted[1].append((store, key))
            return
        targets = [(store, key)]
        ad = self.adapter

        def on_grad(grad):
            if grad is not None:
                rec = TensorRecord(self._copy(grad), ad.dtype_name(grad), ad.shape(grad))
                for st, k in targets:
                    st[k] = rec
                if self._arrived is not None:
                    self._arrived()

        try:
            self._grad_wanted[ident] = (weakref.ref(tensor), targets)
        except TypeError:
            pass
        self._handles.append(ad.add_grad_hook(tensor, on_grad))

    def _make_hooks(self, key: int):
        ad = self.adapter
        path = self.walk.paths[key]
        name = type(self.walk.layers[key]).__name__
        has_params = self.walk.has_params(key)
        innermost = key in self.walk.innermost

        def pre(layer, args, kwargs):
            parent = self._stack[-1] if self._stack else None
            count = self._calls.get(key, 0)
            self._calls[key] = count + 1
            node = Node(index=len(self.trace.nodes), kind="net", name=name, path=path, layer_key=key,
                        parent=parent, has_params=has_params, call_count=count)
            node.enter_seq = self._seq
            self._seq += 1
            node.frames = self._frames(opens=True)
            if parent is None:
                if self.trace.root is None:
                    self.trace.root = node
            else:
                parent.children.append(node)
            self.trace.nodes.append(node)
            self._stack.append(node)
            if self.keep_inputs:
                node.call_args = (self._skeleton(tuple(args)), self._skeleton(dict(kwargs or {})))
            items = tensor_items(args, kwargs, ad.is_tensor) if self.grads or innermost else ()
            if self.grads:
                self._want_input_grads(node, items)
            if innermost:
                self._count_uses(items)
            return None

        def post(layer, args, kwargs, output):
            if not self._stack or self._stack[-1].layer_key != key:
                raise PadiffInternalError(f"forward hooks out of order at {path}")
            node = self._stack.pop()
            if self._within:
                self._within.pop()
            node.exit_seq = self._seq
            self._seq += 1
            self._record_outputs(node, output)
            if self.keep_inputs:
                node.out_skeleton = self._skeleton(output)
            return None

        return self._quiet(pre), self._quiet(post)

    def _quiet(self, hook):
        """``hook``, run with API tracing paused: padiff's own tensor calls are not traced."""
        def run(*a):
            prev, self._in_api = self._in_api, True
            try:
                return hook(*a)
            finally:
                self._in_api = prev
        return run

    def _want_input_grads(self, node: Node, items) -> None:
        """Record the gradients of a layer call's inputs that record one (``items``: their
        :func:`tensor_items`), and count the reads of each."""
        keys = []
        for id_path, leaf in items:
            if self.adapter.requires_grad(leaf):
                node.input_ids.append(id_path)
                keys.append((id_path, self._use_cell(leaf)))
                self._want_grad(leaf, node.grad_in, id_path)
        self._input_keys.append((node, keys))
