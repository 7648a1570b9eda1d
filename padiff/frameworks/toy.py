"""Adapter of the toy framework (``padiff/frameworks/toyfw``): the reference implementation of
the adapter protocol (``base.py``), and what padiff's fast unit tests run on.

Like ``torch.py`` and ``paddle.py`` it only wraps native calls; what the toy framework does
not have (distributed runs, accelerators, dtypes numpy lacks) is answered as a framework
without it answers (None, False, empty), or refused with a :class:`PadiffError` that says so.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from ..errors import PadiffError
from . import toyfw
from .base import FrameworkAdapter
from .toy_names import NAMES
from .toy_tables import WEIGHT_TABLES
from .toyfw import functional, nn, optim
from .toyfw.tensor import Tensor, add, mean, mul, no_grad, run_backward

_PACKAGE = toyfw.__name__ + "."  # "padiff.frameworks.toyfw."
_CONTAINERS = (nn.Sequential,)


# numpy's own dtypes: the toy's, whatever other packages (ml_dtypes' bfloat16) add to numpy
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64", "complex64",
           "complex128")


def _dtype(dtype_name: str) -> np.dtype:
    if dtype_name not in _DTYPES:
        raise PadiffError(f"The toy framework has no dtype {dtype_name!r}: it holds numpy arrays only.")
    return np.dtype(dtype_name)


class Adapter(FrameworkAdapter, names=NAMES, tables=WEIGHT_TABLES):
    # name, title, reference_rank, the API lists and spellings, package_dirs, layer_class,
    # weight_tables and linear_weight_layout come from NAMES and WEIGHT_TABLES (see FrameworkAdapter).
    # Capabilities, as data.
    parallel_layer_classes: dict = {}  # no tensor-parallel layers
    # State files: numpy's .npz archives (load_file / save_raw).
    state_file_suffixes = (".npz",)
    state_file_label = ".npz"
    state_file_zip = False  # an .npz is a zip, but numpy's own: no other framework's file is taken for one
    state_file_names = ()
    safetensors_formats = ("np",)
    lazy_build = "(the toy has no lazy build)"
    save_call = "np.savez(path, **model.state_dict())"

    # --- objects -------------------------------------------------------------------------
    def is_layer(self, obj) -> bool:
        return isinstance(obj, nn.Module)

    def is_tensor(self, obj) -> bool:
        return isinstance(obj, Tensor)

    def is_builtin(self, layer) -> bool:
        return type(layer).__module__.startswith(_PACKAGE)

    def is_container(self, layer) -> bool:
        return isinstance(layer, _CONTAINERS)

    def named_children(self, layer):
        return layer.named_children()

    def own_params(self, layer):
        return layer.named_parameters(recurse=False)

    def own_buffers(self, layer):
        return layer.named_buffers(recurse=False)

    def transient_buffers(self, layer):
        return set(layer.non_persistent_buffers)

    def all_params(self, layer):
        return layer.named_parameters()

    def all_buffers(self, layer):
        return layer.named_buffers()

    def is_training(self, layer) -> bool:
        return layer.training

    def random_layer_p(self, layer):
        return None  # the toy framework has no random layers

    def layer_repr(self, layer) -> str:
        return f"{type(layer).__name__}({layer.extra_repr()})"

    def copy_layer(self, layer, dtype_name=None):
        new = copy.deepcopy(layer)
        if dtype_name:
            for _, t in new.named_parameters() + new.named_buffers():
                if t.dtype.kind in "fc":
                    t.data = t.data.astype(_dtype(dtype_name))
        return new

    def compute_threads(self, model) -> int:
        return 1  # numpy's loops run on the calling thread

    def forward_callable(self, layer):
        return layer.forward

    # --- distributed runs ----------------------------------------------------------------
    def distributed_info(self):
        return None  # the toy framework runs in one process

    def data_parallel_inner(self, model):
        return None

    # --- hooks ---------------------------------------------------------------------------
    def add_forward_hooks(self, layer, pre, post):
        return [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]

    def add_grad_hook(self, tensor, fn):
        return tensor.register_hook(fn)

    def remove_hook(self, handle) -> None:
        handle.remove()

    # --- framework calls (API tracing) ---------------------------------------------------
    def api_functional(self):
        return functional, functional.__name__

    def api_top_level(self):
        return toyfw, toyfw.__name__

    def api_tensor_class(self):
        return Tensor, f"{toyfw.__name__}.Tensor"

    # --- tensors -------------------------------------------------------------------------
    def shape(self, tensor):
        return tensor.shape

    def dtype_name(self, tensor) -> str:
        return tensor.dtype.name

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.data.copy()

    def host_view(self, t):
        return t.data

    def version(self, tensor) -> int:
        return tensor.version

    def fingerprint(self, tensor) -> float:
        flat = tensor.data.reshape(-1)
        flat = flat[:: flat.size // 4096] if flat.size > 65536 else flat
        return math.sqrt(float(np.vdot(flat, flat).real))

    def requires_grad(self, tensor) -> bool:
        return tensor.requires_grad

    def is_floating(self, tensor) -> bool:
        return tensor.dtype.kind in "fc"

    def detach_requires_grad(self, tensor):
        return Tensor(tensor.data, requires_grad=self.is_floating(tensor), dtype=tensor.dtype)

    def from_array(self, array, dtype_name: str, like=None):
        return Tensor(np.asarray(array), dtype=_dtype(dtype_name))

    def mark_requires_grad(self, tensor):
        tensor.requires_grad = True
        return tensor

    def alias(self, tensor):
        return mul(tensor, 1.0)

    def tensor_grad(self, tensor):
        return tensor.grad

    # --- autograd ------------------------------------------------------------------------
    def default_loss(self, tensors, weights):
        total = None
        for t, w in zip(tensors, weights):
            term = mean(mul(t, self.from_array(w, self.dtype_name(t))))
            total = term if total is None else add(total, term)
        return total

    def backward(self, loss, grad=None) -> None:
        if grad is None:
            run_backward([loss], [None])
        else:
            run_backward(list(loss), list(grad))

    def param_grad(self, param):
        return param.grad

    def set_grad(self, param, grad) -> None:
        param.grad = grad

    def no_grad(self):
        return no_grad()

    def set_value(self, param, array) -> None:
        param.set_(array)

    # --- optimizers ----------------------------------------------------------------------
    def is_optimizer(self, obj) -> bool:
        return isinstance(obj, optim.SGD)

    def optimizer_step(self, opt) -> None:
        opt.step()

    def optimizer_lr(self, opt):
        return [float(g["lr"]) for g in opt.param_groups]

    # --- learning-rate schedulers ------------------------------------------------------
    def is_lr_scheduler(self, obj) -> bool:
        return isinstance(obj, optim.StepLR)

    def scheduler_needs_metric(self, sched) -> bool:
        return False  # the toy framework has no scheduler that steps on a metric

    def scheduler_lr(self, sched):
        return self.optimizer_lr(sched.optimizer)

    def scheduler_step(self, sched) -> None:
        sched.step()

    # --- state files: a numpy .npz archive of the state dict ---------------------------------
    def load_file(self, path):
        with np.load(path, allow_pickle=False) as archive:
            return {k: Tensor(archive[k], dtype=archive[k].dtype) for k in archive.files}

    def save_raw(self, state, path) -> None:
        arrays = {k: np.asarray(a, dtype=_dtype(dt)) for k, (a, dt) in state.items()}
        with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    def has_data(self, tensor) -> bool:
        return True  # every toy tensor holds its values

    def raw_array(self, tensor):
        return tensor.data, self.dtype_name(tensor)

    def assign_raw(self, tensor, array, dtype_name: str) -> None:
        tensor.set_(np.asarray(array, dtype=_dtype(dtype_name)))

    def state_items(self, model):
        return list(model.state_dict().items())
