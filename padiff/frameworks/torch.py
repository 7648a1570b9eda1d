"""PyTorch adapter: thin wrappers around torch calls. Every decision lives in the core."""

from __future__ import annotations

import copy
import math
import os
import warnings
import zipfile

import numpy as np
import torch

from .base import FrameworkAdapter
from .torch_names import NAMES
from .torch_tables import WEIGHT_TABLES

_NUMPY_OK = (torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
             torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128)
_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)
# Tensor-parallel layer classes, by class name (Megatron-LM's and fairscale's torch classes carry
# these names; torch itself has none): a layer whose class, or a base class, has one of these
# names is sharded by that layout (padiff/dump/distributed.py has the rules).
_PARALLEL_LAYERS = {"ColumnParallelLinear": "column", "RowParallelLinear": "row", "VocabParallelEmbedding": "vocab"}
_RANDOM = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
           torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


class Adapter(FrameworkAdapter, names=NAMES, tables=WEIGHT_TABLES):
    # name, title, reference_rank, the API lists and spellings, package_dirs, layer_class,
    # weight_tables and linear_weight_layout come from NAMES and WEIGHT_TABLES (see FrameworkAdapter).
    # Capabilities, as data.
    parallel_layer_classes = _PARALLEL_LAYERS  # tensor-parallel classes by name: their layout
    # State files: torch.save writes them; Hugging Face's save_pretrained names one pytorch_model.bin.
    state_file_suffixes = (".pth", ".pt", ".bin", ".ckpt")
    state_file_label = ".pth/.bin"
    state_file_zip = True  # every torch.save since 1.6 writes a zip archive
    state_file_names = ("pytorch_model.bin",)
    safetensors_formats = ("pt", "torch")
    lazy_build = "on the meta device"  # how a model is built without values
    save_call = "torch.save(model.state_dict(), path)"

    # --- objects -------------------------------------------------------------------------
    def is_layer(self, obj) -> bool:
        return isinstance(obj, torch.nn.Module)

    def is_tensor(self, obj) -> bool:
        return isinstance(obj, torch.Tensor)

    def is_builtin(self, layer) -> bool:
        return type(layer).__module__.startswith("torch.")

    def is_container(self, layer) -> bool:
        return isinstance(layer, _CONTAINERS)

    def named_children(self, layer):
        return list(layer.named_children())

    def own_params(self, layer):
        return list(layer.named_parameters(recurse=False))

    def own_buffers(self, layer):
        return list(layer.named_buffers(recurse=False))

    def transient_buffers(self, layer):
        """Names of the layer's own buffers that its state_dict leaves out (persistent=False)."""
        return set(layer._non_persistent_buffers_set)

    def all_params(self, layer):
        return list(layer.named_parameters())

    def copy_layer(self, layer, dtype_name=None):
        """A deep copy of the model, its floating parameters and buffers cast to ``dtype_name``."""
        new = copy.deepcopy(layer)
        return new.to(getattr(torch, dtype_name)) if dtype_name else new

    def all_buffers(self, layer):
        return list(layer.named_buffers())

    def compute_threads(self, model) -> int:
        """CPU threads the model's kernels keep busy: 0 on a GPU, else torch's intra-op threads."""
        if any(p.device.type != "cpu" for p in model.parameters()):
            return 0
        return torch.get_num_threads()

    def is_training(self, layer) -> bool:
        return layer.training

    def random_layer_p(self, layer):
        """Drop probability of a layer that is random in train mode, else None."""
        if isinstance(layer, _RANDOM):
            return float(layer.p)
        return None

    def forward_callable(self, layer):
        return layer.forward

    def layer_repr(self, layer) -> str:
        text = f"{type(layer).__name__}({layer.extra_repr()})"
        return text

    # --- distributed runs ----------------------------------------------------------------
    def distributed_info(self):
        """The torch.distributed run this process is part of: ``{"rank", "world_size", "backend",
        "groups", "from", "run"}``, or None outside one (or in a world of one process). torch keeps
        no registry of data- or tensor-parallel groups, so ``groups`` is empty; ``run`` tells runs
        apart (torchrun's run id, or the rendezvous address), None when unknown."""
        d = torch.distributed
        if not (d.is_available() and d.is_initialized()) or d.get_world_size() <= 1:
            return None
        env = os.environ
        run = env.get("TORCHELASTIC_RUN_ID") or (f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
                                                 if "MASTER_ADDR" in env and "MASTER_PORT" in env else None)
        return {"rank": d.get_rank(), "world_size": d.get_world_size(), "backend": str(d.get_backend()),
                "groups": {}, "from": "torch.distributed", "run": run}

    def data_parallel_inner(self, model):
        """The model inside a data-parallel wrapper (DistributedDataParallel, DataParallel), else None."""
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            return model.module
        return None

    # --- hooks ---------------------------------------------------------------------------
    def add_forward_hooks(self, layer, pre, post):
        """pre(layer, args, kwargs), post(layer, args, kwargs, output); returns handles."""
        h1 = layer.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            h2 = layer.register_forward_hook(post, with_kwargs=True)
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
        return torch.nn.functional, "torch.nn.functional"

    def api_top_level(self):
        return torch, "torch"

    def api_tensor_class(self):
        return torch.Tensor, "torch.Tensor"

    # --- tensors -------------------------------------------------------------------------
    def host_view(self, t):
        """A zero-copy numpy view of a CPU tensor; None where there is none (a GPU tensor,
        bfloat16). Whoever keeps it must copy it: an in-place op would change it."""
        if t.device.type != "cpu" or t.dtype not in _NUMPY_OK:
            return None
        return t.detach().numpy()

    def to_numpy(self, tensor) -> np.ndarray:
        """A copy, never a view: a CPU tensor's .numpy() shares its memory, and a later in-place
        op (ReLU(inplace=True), x += y) would change what was recorded."""
        t = tensor.detach()
        if t.dtype not in _NUMPY_OK:
            return t.float().cpu().numpy()  # bfloat16, float8, ...: .float() made a new tensor
        if t.device.type != "cpu":
            return t.cpu().numpy()  # the transfer made a copy
        return t.numpy().copy()

    def version(self, tensor) -> int:
        """Counter bumped by every in-place change of the tensor."""
        return int(tensor._version)

    def fingerprint(self, tensor) -> float:
        """The L2 norm of a floating tensor, or of an evenly strided sample of a large one (to
        tell calls apart)."""
        t = tensor.detach()
        n = t.numel()
        if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and t.is_contiguous():
            flat = t.view(-1).numpy()  # numpy on the same memory: no framework op to dispatch
            flat = flat[:: n // 4096] if n > 65536 else flat
            return math.sqrt(float(np.dot(flat, flat)))
        if n > 65536 and t.is_contiguous():
            t = t.view(-1)[:: n // 4096]  # a strided sample tells computations apart as well
        return float(torch.linalg.vector_norm(t if t.dtype in (torch.float32, torch.float64) else t.float()))

    def dtype_name(self, tensor) -> str:
        return str(tensor.dtype).replace("torch.", "")

    def shape(self, tensor):
        return tuple(tensor.shape)

    def requires_grad(self, tensor) -> bool:
        return bool(tensor.requires_grad)

    def is_floating(self, tensor) -> bool:
        return tensor.is_floating_point() or tensor.is_complex()

    def device_name(self, tensor) -> str:
        return str(tensor.device)

    def detach_requires_grad(self, tensor):
        """A fresh leaf with the same value that records its gradient."""
        return tensor.detach().clone().requires_grad_(tensor.is_floating_point())

    def from_array(self, array, dtype_name: str, like=None):
        """A tensor of ``dtype_name`` holding ``array``, on the device of ``like``."""
        t = torch.as_tensor(np.asarray(array, order="C"))
        dtype = getattr(torch, dtype_name, None)
        return t.to(dtype=dtype if isinstance(dtype, torch.dtype) else t.dtype,
                    device=like.device if like is not None else "cpu")

    def mark_requires_grad(self, tensor):
        return tensor.requires_grad_(True)

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
            total = term if total is None else total + term.to(total.dtype)
        return total

    def backward(self, loss, grad=None) -> None:
        if grad is None:
            loss.backward()
        else:
            torch.autograd.backward(loss, grad)

    def param_grad(self, param):
        return param.grad

    def set_grad(self, param, grad) -> None:
        param.grad = grad

    def no_grad(self):
        return torch.no_grad()

    def set_value(self, param, array: np.ndarray) -> None:
        with torch.no_grad():
            param.copy_(torch.as_tensor(np.asarray(array, order="C")).to(dtype=param.dtype, device=param.device))

    def scalar(self, tensor) -> float:
        return float(tensor.detach().float().cpu().item())

    # --- optimizers ----------------------------------------------------------------------
    def is_optimizer(self, obj) -> bool:
        return isinstance(obj, torch.optim.Optimizer)

    def optimizer_step(self, opt) -> None:
        opt.step()

    def optimizer_zero_grad(self, opt) -> None:
        opt.zero_grad(set_to_none=True)

    def optimizer_lr(self, opt):
        return [float(g["lr"]) for g in opt.param_groups]

    # --- learning-rate schedulers ------------------------------------------------------
    def is_lr_scheduler(self, obj) -> bool:
        sched = torch.optim.lr_scheduler
        return isinstance(obj, (getattr(sched, "LRScheduler", sched._LRScheduler), sched.ReduceLROnPlateau))

    def scheduler_needs_metric(self, sched) -> bool:
        return isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)

    def scheduler_lr(self, sched):
        """The learning rate its optimizer uses now, one per parameter group."""
        return self.optimizer_lr(sched.optimizer)

    def scheduler_step(self, sched) -> None:
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore", UserWarning)
            sched.step()

    # --- state files (the checkpoint converter) ------------------------------------------
    def load_file(self, path):
        """A state dict saved with torch.save; a zip file (every torch >= 1.6 writes one) is
        memory-mapped, so its tensors are read from the file when used."""
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))

    def save_file(self, obj, path) -> None:
        torch.save(obj, path)

    def save_raw(self, state, path) -> None:
        """Save ``{key: (array, dtype name)}`` as a state dict of tensors."""
        torch.save({k: self.from_raw(a, dt) for k, (a, dt) in state.items()}, path)

    def has_data(self, tensor) -> bool:
        """False for a tensor without values (a model built on the meta device)."""
        return not tensor.is_meta

    def raw_array(self, tensor):
        """(array, dtype name): a zero-copy view of a CPU tensor where torch allows it; the raw
        bits (uint16, uint8) for dtypes numpy lacks (bfloat16, float8)."""
        t = tensor.detach().cpu()
        name = self.dtype_name(t)
        if t.dtype not in _NUMPY_OK:
            t = t.view({2: torch.uint16, 1: torch.uint8}[t.element_size()])
        return t.numpy(), name

    def from_raw(self, array, dtype_name: str):
        """A CPU tensor of ``dtype_name`` from an array (raw bits for bfloat16, float8)."""
        arr = np.asarray(array)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        want = getattr(torch, dtype_name)
        return t if t.dtype == want else t.view(want)

    def assign_raw(self, tensor, array, dtype_name: str) -> None:
        """Set a model's tensor from an array of ``dtype_name`` (cast to the tensor's dtype)."""
        with torch.no_grad():
            tensor.copy_(self.from_raw(array, dtype_name).to(dtype=tensor.dtype, device=tensor.device))

    def state_items(self, model):
        """(state_dict key, the model's own tensor) pairs."""
        return list(model.state_dict(keep_vars=True).items())
