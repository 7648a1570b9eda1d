"""PaddlePaddle adapter: thin wrappers around paddle calls. Every decision lives in the core."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import paddle

from .base import FrameworkAdapter
from .paddle_names import NAMES
from .paddle_tables import WEIGHT_TABLES

_CONTAINERS = (paddle.nn.Sequential, paddle.nn.LayerList, paddle.nn.LayerDict)
# Tensor-parallel layer classes, by class name: paddle.distributed.fleet.meta_parallel's (and
# paddleformers', which use them); a layer whose class, or a base class, has one of these names is
# sharded by that layout (padiff/dump/distributed.py has the rules).
_PARALLEL_LAYERS = {"ColumnParallelLinear": "column", "RowParallelLinear": "row", "VocabParallelEmbedding": "vocab"}
# The groups of fleet's hybrid parallel topology: padiff's name -> (size getter, group getter) of
# HybridCommunicateGroup (a group getter asserts when its degree is 1: it is asked only above 1).
_HYBRID_GROUPS = {"dp": ("get_data_parallel_world_size", "get_data_parallel_group"),
                  "tp": ("get_model_parallel_world_size", "get_model_parallel_group"),
                  "pp": ("get_pipe_parallel_world_size", "get_pipe_parallel_group"),
                  "sharding": ("get_sharding_parallel_world_size", "get_sharding_parallel_group"),
                  "sep": ("get_sep_parallel_world_size", "get_sep_parallel_group")}
_RANDOM = (paddle.nn.Dropout, paddle.nn.Dropout2D, paddle.nn.Dropout3D, paddle.nn.AlphaDropout)
_NUMPY_OK = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool",
             "complex64", "complex128")


def _norm(flat: np.ndarray) -> float:
    flat = flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)
    return math.sqrt(float(np.dot(flat, flat)))


_DTYPE_NAMES: dict = {}  # paddle dtype -> its name ("float32")


class Adapter(FrameworkAdapter, names=NAMES, tables=WEIGHT_TABLES):
    # name, title, reference_rank, the API lists and spellings, package_dirs, layer_class,
    # weight_tables and linear_weight_layout come from NAMES and WEIGHT_TABLES (see FrameworkAdapter).
    # Capabilities, as data.
    parallel_layer_classes = _PARALLEL_LAYERS  # tensor-parallel classes by name: their layout
    # State files: paddle.save writes them; paddleformers' save_pretrained names one model_state.pdparams.
    state_file_suffixes = (".pdparams",)
    state_file_label = ".pdparams"
    state_file_zip = False
    state_file_names = ("model_state.pdparams",)
    safetensors_formats = ("np", "pd", "paddle")
    lazy_build = "under paddle.LazyGuard"  # how a model is built without values
    save_call = "paddle.save(model.state_dict(), path)"

    # --- objects -------------------------------------------------------------------------
    def is_layer(self, obj) -> bool:
        return isinstance(obj, paddle.nn.Layer)

    def is_tensor(self, obj) -> bool:
        return isinstance(obj, paddle.Tensor)

    def is_builtin(self, layer) -> bool:
        return type(layer).__module__.startswith("paddle.")

    def is_container(self, layer) -> bool:
        # paddle's own LSTM/GRU/SimpleRNN subclass LayerList but are layers, not containers
        return isinstance(layer, _CONTAINERS) and (
            type(layer) in _CONTAINERS or not type(layer).__module__.startswith("paddle."))

    def named_children(self, layer):
        return list(layer.named_children())

    def own_params(self, layer):
        return list(layer.named_parameters(include_sublayers=False))

    def own_buffers(self, layer):
        return list(layer.named_buffers(include_sublayers=False))

    def transient_buffers(self, layer):
        """Names of the layer's own buffers that its state_dict leaves out (persistable=False)."""
        return set(layer._non_persistable_buffer_names_set)

    def all_params(self, layer):
        return list(layer.named_parameters())

    def copy_layer(self, layer, dtype_name=None):
        """A deep copy of the model, its floating parameters and buffers cast to ``dtype_name``."""
        new = copy.deepcopy(layer)
        if dtype_name:
            new.to(dtype=dtype_name)
        return new

    def all_buffers(self, layer):
        return list(layer.named_buffers())

    def compute_threads(self, model) -> int:
        """CPU threads the model's kernels keep busy: 0 on a GPU; 1 on the CPU, where paddle's
        dynamic-graph kernels run single-threaded (measured: CPU time equals wall time)."""
        if any(not p.place.is_cpu_place() for p in model.parameters()):
            return 0
        return 1

    def is_training(self, layer) -> bool:
        return layer.training

    def random_layer_p(self, layer):
        if isinstance(layer, _RANDOM):
            return float(layer.p)
        return None

    def forward_callable(self, layer):
        return layer.forward

    def layer_repr(self, layer) -> str:
        return f"{type(layer).__name__}({layer.extra_repr()})"

    # --- distributed runs ----------------------------------------------------------------
    def distributed_info(self):
        """The paddle.distributed run this process is part of: ``{"rank", "world_size", "backend",
        "groups", "from", "run"}``, or None outside one (or in a world of one process). ``groups``
        holds the ranks of this process's data-, tensor-, pipeline-, sharding- and sequence-parallel
        groups when fleet's hybrid topology is set up (``fleet.init`` with ``hybrid_configs``), else
        nothing; ``run`` tells runs apart (the launch's master or endpoints), None when unknown."""
        d = paddle.distributed
        if not d.is_initialized() or d.get_world_size() <= 1:
            return None
        from paddle.distributed.fleet.base import topology

        groups, source = {}, "paddle.distributed"
        hcg = topology._HYBRID_PARALLEL_GROUP
        if hcg is not None:
            source = "paddle.distributed (fleet hybrid parallel groups)"
            rank = d.get_rank()
            for name, (size, getter) in _HYBRID_GROUPS.items():
                n = getattr(hcg, size)() if hasattr(hcg, size) else 1
                if n > 1:
                    groups[name] = [int(r) for r in getattr(hcg, getter)().ranks]
                elif name in ("dp", "tp", "pp"):
                    groups[name] = [rank]
        env = os.environ
        run = env.get("PADDLE_MASTER") or env.get("PADDLE_TRAINER_ENDPOINTS")
        return {"rank": d.get_rank(), "world_size": d.get_world_size(), "backend": str(d.get_backend()).lower(),
                "groups": groups, "from": source, "run": run}

    def data_parallel_inner(self, model):
        """The model inside paddle.DataParallel, else None."""
        if isinstance(model, paddle.DataParallel):
            return model._layers
        return None

    # --- hooks ---------------------------------------------------------------------------
    def add_forward_hooks(self, layer, pre, post):
        h1 = layer.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            h2 = layer.register_forward_post_hook(post, with_kwargs=True)
        except BaseException:
            h1.remove()
            raise
        return [h1, h2]

    def add_grad_hook(self, tensor, fn):
        def hook(grad):
            fn(grad)
        return tensor.register_hook(hook)

    def remove_hook(self, handle) -> None:
        handle.remove()

    # --- framework calls (API tracing) ---------------------------------------------------
    def api_functional(self):
        return paddle.nn.functional, "paddle.nn.functional"

    def api_top_level(self):
        return paddle, "paddle"

    def api_tensor_class(self):
        return paddle.Tensor, "paddle.Tensor"

    # --- tensors -------------------------------------------------------------------------
    def host_view(self, t):
        """A zero-copy numpy view of a CPU tensor through DLPack; None where there is none (a GPU
        tensor, bfloat16). Copying through it is about ten times faster than ``.numpy()``."""
        if not t.place.is_cpu_place() or self.dtype_name(t) not in _NUMPY_OK:
            return None
        try:  # paddle refuses DLPack for a tensor that requires gradients (a gradient does too)
            return np.from_dlpack(t if t.stop_gradient else t.detach())
        except (RuntimeError, TypeError, ValueError, BufferError):
            return None

    def to_numpy(self, tensor) -> np.ndarray:
        t = tensor.detach()
        view = self.host_view(t)
        if view is not None:
            return view.copy()
        if self.dtype_name(t) not in _NUMPY_OK:
            t = t.astype("float32")
        return t.cpu().numpy() if not t.place.is_cpu_place() else t.numpy()

    def version(self, tensor) -> int:
        """Counter bumped by every in-place change of the tensor."""
        return int(tensor.inplace_version)

    def fingerprint(self, tensor) -> float:
        """The L2 norm of a floating tensor, or of an evenly strided sample of a large one (to
        tell calls apart)."""
        t = tensor.detach()
        n = math.prod(t.shape)  # paddle's Tensor.size goes through numpy.prod: 50x slower
        view = self.host_view(t)
        if view is not None:  # numpy on the same memory: no framework op to dispatch
            flat = view.reshape(-1)
            return _norm(flat[:: n // 4096] if n > 65536 else flat)
        if n > 65536:
            t = t.reshape([-1])[:: n // 4096]
        return float(paddle.linalg.norm(t if self.dtype_name(t) in ("float32", "float64") else t.astype("float32")))

    def dtype_name(self, tensor) -> str:
        dtype = tensor.dtype
        name = _DTYPE_NAMES.get(dtype)
        if name is None:  # str() of a paddle dtype takes a few microseconds; it is asked per record
            name = _DTYPE_NAMES[dtype] = str(dtype).replace("paddle.", "")
        return name

    def shape(self, tensor):
        return tuple(tensor.shape)

    def requires_grad(self, tensor) -> bool:
        return not tensor.stop_gradient

    def is_floating(self, tensor) -> bool:
        return tensor.is_floating_point() or tensor.is_complex()

    def device_name(self, tensor) -> str:
        return str(tensor.place)

    def detach_requires_grad(self, tensor):
        out = tensor.detach().clone()
        out.stop_gradient = not tensor.is_floating_point()
        return out

    def from_array(self, array, dtype_name: str, like=None):
        """A tensor of ``dtype_name`` holding ``array``, on the device of ``like``."""
        t = paddle.to_tensor(np.asarray(array, order="C"), place=like.place if like is not None else None)
        return t.astype(dtype_name) if self.dtype_name(t) != dtype_name else t

    def mark_requires_grad(self, tensor):
        tensor.stop_gradient = False
        return tensor

    def alias(self, tensor):
        """A copy that is not a leaf: its gradient reaches ``tensor``, and an in-place op
        (ReLU(inplace=True)) may change it where it may not change a leaf."""
        return tensor.clone()

    def tensor_grad(self, tensor):
        return tensor.grad

    # --- autograd ------------------------------------------------------------------------
    def default_loss(self, tensors, weights):
        """The sum of the outputs' weighted means, each in its own dtype (a bfloat16 model's
        loss is bfloat16, so it is judged at bfloat16 tolerance)."""
        total = None
        for t, w in zip(tensors, weights):
            term = (t * self.from_array(w, self.dtype_name(t), like=t)).mean()
            total = term if total is None else total + term.astype(total.dtype)
        return total

    def backward(self, loss, grad=None) -> None:
        if grad is None:
            loss.backward()
        else:
            paddle.autograd.backward(loss, grad)

    def param_grad(self, param):
        return param.grad

    def set_grad(self, param, grad) -> None:
        if grad is None:
            param.clear_gradient(False)
        else:
            param._set_grad_ivar(grad)

    def no_grad(self):
        return paddle.no_grad()

    def set_value(self, param, array: np.ndarray) -> None:
        value = np.asarray(array, order="C")  # np.ascontiguousarray would make a 0-d array 1-d
        if self.dtype_name(param) in _NUMPY_OK:
            param.set_value(value.astype(self.dtype_name(param)))
        else:  # bfloat16 and friends: numpy has no such type, cast in paddle
            param.set_value(paddle.to_tensor(value).astype(param.dtype))

    def scalar(self, tensor) -> float:
        return float(tensor.detach().astype("float32").item())

    # --- optimizers ----------------------------------------------------------------------
    def is_optimizer(self, obj) -> bool:
        return isinstance(obj, paddle.optimizer.Optimizer)

    def optimizer_step(self, opt) -> None:
        opt.step()

    def optimizer_zero_grad(self, opt) -> None:
        opt.clear_grad(set_to_zero=False)

    def optimizer_lr(self, opt):
        return [float(opt.get_lr())]

    # --- learning-rate schedulers ------------------------------------------------------
    def is_lr_scheduler(self, obj) -> bool:
        return isinstance(obj, paddle.optimizer.lr.LRScheduler)

    def scheduler_needs_metric(self, sched) -> bool:
        return isinstance(sched, paddle.optimizer.lr.ReduceOnPlateau)

    def scheduler_lr(self, sched):
        """The scheduler's current learning rate, as a one-item list (like torch's param groups)."""
        return [float(sched.last_lr)]

    def scheduler_step(self, sched) -> None:
        sched.step()

    # --- state files (the checkpoint converter) ------------------------------------------
    def save_file(self, obj, path) -> None:
        paddle.save(obj, path)

    def save_raw(self, state, path) -> None:
        """Save ``{key: (array, dtype name)}`` as a state dict. paddle saves numpy arrays as they
        are and reads a uint16 array back as bfloat16, so only other dtypes become tensors."""
        paddle.save({k: a if dt in _NUMPY_OK or dt == "bfloat16" else self.from_raw(a, dt)
                     for k, (a, dt) in state.items()}, path)

    def load_file(self, path):
        """A state dict saved with paddle.save (read whole: a .pdparams is one pickle)."""
        return paddle.load(path)

    def has_data(self, tensor) -> bool:
        """False for a parameter without values (a model built under paddle.LazyGuard)."""
        return bool(tensor._is_initialized())

    def raw_array(self, tensor):
        """(array, dtype name); paddle gives bfloat16 as its raw bits (uint16)."""
        t = tensor.detach()
        view = self.host_view(t)
        return (view if view is not None else t.cpu().numpy()), self.dtype_name(t)

    def from_raw(self, array, dtype_name: str):
        """A CPU tensor of ``dtype_name`` from an array (raw bits for bfloat16, float8)."""
        t = paddle.to_tensor(np.ascontiguousarray(array), place=paddle.CPUPlace())
        want = getattr(paddle, dtype_name)
        return t if t.dtype == want else t.view(want)

    def assign_raw(self, tensor, array, dtype_name: str) -> None:
        """Set a model's tensor from an array of ``dtype_name`` (cast to the tensor's dtype)."""
        t = self.from_raw(array, dtype_name)
        tensor.set_value(t if t.dtype == tensor.dtype else t.astype(tensor.dtype))

    def state_items(self, model):
        """(state_dict key, the model's own tensor) pairs; aliases share one tensor."""
        return list(model.state_dict().items())
