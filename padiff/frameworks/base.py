"""The adapter protocol: what padiff's core asks of a framework, written down.

Two protocols, one inside the other:

- :class:`RecordedModelAdapter` is what weight pairing (``padiff.weights``) and the reports use
  to read a model's layers and tensors. The offline dump reader implements only this part
  (``padiff.dump.reader.DumpAdapter``), over a model that was recorded in another process.
- :class:`FrameworkAdapter` extends it with everything a live run needs: hooks, API tracing,
  autograd, optimizers and schedulers, state files and distributed runs.

A new framework is one module beside ``torch.py`` and ``paddle.py`` whose ``Adapter`` class
implements :class:`FrameworkAdapter`, and one line in ``frameworks/__init__.py``.
``tests/test_adapter_protocol.py`` checks that both adapters implement every member and that
the core uses no adapter member that is not declared here.

Framework objects (layers, tensors, optimizers, hook handles) are opaque to the core: they are
typed ``Any`` below and are only handed back to the adapter that made them. Names are dotted
paths relative to the layer asked about; dtypes travel as names (``"float32"``, ``"bfloat16"``).

The framework adapters also define helpers the core does not call (``device_name``, ``scalar``,
``optimizer_zero_grad``, ``save_file``, ``from_raw``); they are not part of the protocol.

What a framework is called and how it spells things is plain data, :class:`FrameworkNames`, kept in
a module of its own beside the adapter (``torch_names.py``): the dump reader, the command line and
the error messages read it without importing the framework (an offline compare imports neither),
and the adapter takes its protocol members from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import (Any, Callable, ContextManager, Dict, FrozenSet, List, Optional, Protocol, Set, Tuple,
                    runtime_checkable)

import numpy as np

Layer = Any  # a framework's layer / module
Tensor = Any  # a framework's tensor or parameter
Handle = Any  # what a hook registration returns; only ``remove_hook`` takes it


@dataclass(frozen=True)
class FrameworkNames:
    """A framework's names and spellings, as data that needs no import of the framework: its
    adapter's protocol members of the same names are these values, and the core reads them
    from here where no adapter is at hand (an offline compare, a message about an object of
    no known framework, the command line's help). ``frameworks/__init__.py`` finds each
    framework's table by its name."""

    name: str
    """The short name: the key of the adapter module, what a dump records (``"torch"``)."""
    title: str
    """The name as the reports write it (``"Torch"``)."""
    product: str
    """The project's own name, for the command line's description (``"PyTorch"``)."""
    distribution: str
    """The name it installs under (``pip install paddlepaddle``): the HTML report's versions list
    names the framework so."""
    reference_rank: int
    """Which framework is the reference when two differ: the higher rank (the seeds copy torch's
    weights into the paddle port, so torch ranks above paddle)."""
    type_names: Dict[str, str]
    """Dotted names of the public classes messages tell the user to pass, by role: ``"model"``,
    ``"tensor"``, ``"loader"``, ``"scheduler"``."""
    package_dirs: Tuple[str, ...]
    """Folder names of the framework's own packages; a stack frame in a file under one of them is
    the framework's, not the user's."""
    api_top_level_names: Tuple[str, ...]
    """Functions of the top-level package traced while recording (those that exist)."""
    api_tensor_methods: Tuple[str, ...]
    """Methods of the tensor class traced while recording (those that exist)."""
    api_not_ops: FrozenSet[str]
    """Public names of the functional module that are no operations (dispatch helpers): not traced."""
    api_spellings: Dict[str, str]
    """The framework's names of operations (the last part of a traced call's name, dunders and
    in-place ``_`` stripped) that frameworks spell differently, mapped to the one name calls pair by:
    ``"concat": "cat"``, ``"clip": "clamp"``, ``"mm": "matmul"``."""


@dataclass(frozen=True)
class WeightTables:
    """What a framework declares for converting weights to and from other frameworks: plain data
    (``frameworks/<name>_tables.py``) that ``padiff.weights.rules`` makes its shipped rules from."""

    layer_kinds: Dict[str, str]
    """The framework's built-in layer classes with weights, by class name, and their
    framework-neutral kind (``"linear"``, ``"conv2d"``, ``"batchnorm2d"``, ``"multiheadattention"``):
    the shipped conversion rules pair classes of related kinds across frameworks. Where several
    classes have one kind, the first listed is the one a layer of another framework is taken for
    when only that other model is known (the checkpoint converter)."""
    tensor_names: Dict[str, str]
    """The framework's names of the tensors the shipped rules rename, by a neutral name:
    ``"batchnorm.mean"``, ``"batchnorm.variance"``, ``"instancenorm.scale"``, ``"prelu.weight"``;
    the packed attention's ``"attention.packed_weight"``/``"attention.packed_bias"``, its
    ``"attention.{q,k,v}_weight"``/``"attention.{q,k,v}_bias"``, ``"attention.bias_k"``/``"bias_v"``,
    ``"attention.out_weight"``/``"attention.out_bias"`` (dotted below the layer); and
    ``"rnn.projection"``, the LSTM projection weight (a regular expression: it is numbered per
    layer and direction). A name the framework lacks is left out."""
    linear_weight_layout: str
    """``"out_in"`` or ``"in_out"``: how Linear-like weights are stored; the rules transpose them
    between frameworks that differ."""
    skipped_buffers: Tuple[str, ...]
    """Last names of buffers that no other framework has a place for, so weight pairing and the
    checkpoint converter leave them out (torch's BatchNorm ``num_batches_tracked``)."""



# FrameworkNames fields an adapter declares as members of the same names.
_NAMES_MEMBERS = ("name", "title", "reference_rank", "package_dirs", "api_top_level_names", "api_tensor_methods",
                  "api_not_ops", "api_spellings")

@runtime_checkable
class RecordedModelAdapter(Protocol):
    """A model's layers and tensors, read only: what weight pairing and the reports use. Live
    frameworks and the offline dump reader (``DumpAdapter``) implement it."""

    # --- capabilities, as data ---------------------------------------------------------------
    name: str
    """The framework's short name (``"torch"``, ``"paddle"``): the key of its adapter module, the
    name a dump records, and the side names the core compares against."""
    title: str
    """The framework's name as the reports write it (``"Torch"``, ``"Paddle"``)."""
    linear_weight_layout: Optional[str]
    """How ``Linear.weight`` is stored: ``"out_in"`` ([out_features, in_features], torch) or
    ``"in_out"`` (paddle). Weight pairing transposes between the two and finds fused projections
    with it; a dump records it. None only for a dump of a framework padiff has no tables for,
    made by a padiff that did not record it: fused projections are then not looked for."""
    reference_rank: int
    """Which side is the reference when the two models' frameworks differ: the one of the higher
    rank (:attr:`FrameworkNames.reference_rank`); :func:`padiff.side.reference_index` reads it."""
    api_spellings: Dict[str, str]
    """The framework's spellings of operations mapped to the names calls of two frameworks pair by
    (:attr:`FrameworkNames.api_spellings`); a recorded trace carries them to the pairing."""
    weight_tables: "WeightTables"
    """The framework's tables for converting weights (layer kinds, renamed tensor names, Linear
    layout, buffers no other framework has), declared in ``frameworks/<name>_tables.py`` so an
    offline dump has them without the framework."""

    # --- objects -----------------------------------------------------------------------------
    def is_layer(self, obj: Any) -> bool:
        """Whether ``obj`` is a layer (module) of this framework."""

    def is_tensor(self, obj: Any) -> bool:
        """Whether ``obj`` is a tensor (or parameter) of this framework. Passed around as the leaf
        test when walking nested inputs and outputs."""

    def is_builtin(self, layer: Layer) -> bool:
        """Whether the layer's class is the framework's own (``torch.nn.Linear``), not the user's.
        A built-in layer with no sublayers is compared and copied as a whole."""

    def is_container(self, layer: Layer) -> bool:
        """Whether the layer only holds others (Sequential, ModuleList/LayerList, ModuleDict/LayerDict);
        a built-in layer that subclasses a container (paddle's LSTM) is not one."""

    def named_children(self, layer: Layer) -> List[Tuple[str, Layer]]:
        """The direct sublayers as ``(name, layer)``, in registration order (a fresh list)."""

    def own_params(self, layer: Layer) -> List[Tuple[str, Tensor]]:
        """The layer's own parameters, not its sublayers', as ``(name, tensor)`` in registration order."""

    def own_buffers(self, layer: Layer) -> List[Tuple[str, Tensor]]:
        """The layer's own buffers, not its sublayers', as ``(name, tensor)`` in registration order."""

    def transient_buffers(self, layer: Layer) -> Set[str]:
        """Names of the layer's own buffers that its state dict leaves out (non-persistent)."""

    def all_params(self, layer: Layer) -> List[Tuple[str, Tensor]]:
        """Every parameter below the layer with dotted names, each tensor once, own first: the
        order of ``named_parameters()``."""

    def all_buffers(self, layer: Layer) -> List[Tuple[str, Tensor]]:
        """Every buffer below the layer with dotted names, each tensor once: ``named_buffers()``."""

    def is_training(self, layer: Layer) -> bool:
        """Whether the layer is in training mode."""

    def random_layer_p(self, layer: Layer) -> Optional[float]:
        """The drop probability of a layer that is random in training mode (Dropout and kin),
        else None. The core warns about such layers before a run."""

    def layer_repr(self, layer: Layer) -> str:
        """A one-line description for reports: ``ClassName(extra repr)``."""

    # --- tensors -----------------------------------------------------------------------------
    def shape(self, tensor: Tensor) -> Tuple[int, ...]:
        """The tensor's shape as a tuple of ints."""

    def dtype_name(self, tensor: Tensor) -> str:
        """The dtype without the framework prefix (``"float32"``, ``"bfloat16"``)."""

    def has_data(self, tensor: Tensor) -> bool:
        """False for a tensor without values (a model built on the meta device or lazily)."""

    def to_numpy(self, tensor: Tensor) -> np.ndarray:
        """The tensor's value as a numpy array the caller may keep (never a view of memory that a later
        in-place op could change); dtypes numpy lacks (bfloat16) come back as float32."""


@runtime_checkable
class FrameworkAdapter(RecordedModelAdapter, Protocol):
    """Everything padiff's core asks of a live framework: ``frameworks/torch.py`` and
    ``frameworks/paddle.py`` implement it. Methods are thin wrappers around native calls; every
    decision stays in the core.

    An implementation names its tables in its class statement, ``class Adapter(FrameworkAdapter,
    names=NAMES, tables=WEIGHT_TABLES)``, and the members that are their values (``name``,
    ``title``, ``reference_rank``, the API lists and spellings, ``package_dirs``, ``layer_class``,
    ``weight_tables``, ``linear_weight_layout``) are set from them, so the two cannot disagree."""

    def __init_subclass__(cls, names: Optional["FrameworkNames"] = None,
                          tables: Optional["WeightTables"] = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if names is not None:
            for member in _NAMES_MEMBERS:
                setattr(cls, member, getattr(names, member))
            cls.layer_class = names.type_names["model"]
        if tables is not None:
            cls.weight_tables = tables
            cls.linear_weight_layout = tables.linear_weight_layout

    # --- capabilities, as data ---------------------------------------------------------------
    parallel_layer_classes: Dict[str, str]
    """Tensor-parallel layer classes, by class name, and their layout (``"column"``, ``"row"`` or
    ``"vocab"``); a layer whose class or a base class has one of these names is sharded so.
    Empty where the framework has none."""
    package_dirs: Tuple[str, ...]
    """Folder names of the framework's own packages (``("torch",)``): the recorder leaves frames in
    files under them out of the user's source lines."""
    api_top_level_names: Tuple[str, ...]
    """Names of :meth:`api_top_level`'s functions to trace; those that exist are wrapped."""
    api_tensor_methods: Tuple[str, ...]
    """Names of :meth:`api_tensor_class`'s methods to trace; those that exist are wrapped."""
    api_not_ops: FrozenSet[str]
    """Public names of :meth:`api_functional`'s module that are no operations: not wrapped."""

    layer_class: str
    """The framework's layer base class as users write it (``"torch.nn.Module"``), for messages."""

    # --- state files (the checkpoint converter) ----------------------------------------------
    state_file_suffixes: Tuple[str, ...]
    """Lower-case suffixes of the framework's own state-dict files (what ``load_file`` reads and
    ``save_raw`` writes), the one padiff suggests first."""
    state_file_label: str
    """How messages name those files (``".pth/.bin"``)."""
    state_file_zip: bool
    """Whether the framework's state files are zip archives: a zip of another name is taken for
    one of them."""
    state_file_names: Tuple[str, ...]
    """File names a pretrained-model folder keeps this framework's state dict under
    (``"pytorch_model.bin"``)."""
    safetensors_formats: Tuple[str, ...]
    """Values of a safetensors file's ``format`` metadata that mean this framework's layout; the
    first is the one padiff writes."""
    lazy_build: str
    """How a model is built without values in this framework, for messages (``"on the meta device"``;
    ``has_data`` is False for its tensors)."""
    save_call: str
    """How a user saves a state dict with this framework, for messages
    (``"torch.save(model.state_dict(), path)"``)."""

    # --- objects -----------------------------------------------------------------------------
    def copy_layer(self, layer: Layer, dtype_name: Optional[str] = None) -> Layer:
        """A deep copy of the model; with ``dtype_name``, its floating parameters and buffers are cast
        to that dtype. The user's model is not changed."""

    def compute_threads(self, model: Layer) -> int:
        """CPU threads the model's kernels keep busy: 0 when it runs on an accelerator. The core
        overlaps its own work with the framework's only when a core is left idle."""

    def forward_callable(self, layer: Layer) -> Callable:
        """The layer's forward method, whose signature tells which keyword inputs it takes."""

    # --- distributed runs --------------------------------------------------------------------
    def distributed_info(self) -> Optional[Dict[str, Any]]:
        """The distributed run this process is part of: ``{"rank", "world_size", "backend", "groups",
        "from", "run"}`` (``groups``: parallel group name -> ranks; ``run``: an id of the launch, or
        None), or None outside one or in a world of one process."""

    def data_parallel_inner(self, model: Layer) -> Optional[Layer]:
        """The model inside a data-parallel wrapper (DistributedDataParallel, DataParallel), else None."""

    # --- hooks -------------------------------------------------------------------------------
    def add_forward_hooks(self, layer: Layer, pre: Callable, post: Callable) -> List[Handle]:
        """Register ``pre(layer, args, kwargs)`` before and ``post(layer, args, kwargs, output)`` after
        the layer's forward (both return None); returns their handles. Registers nothing if it raises."""

    def add_grad_hook(self, tensor: Tensor, fn: Callable[[Tensor], None]) -> Handle:
        """Call ``fn(grad)`` when the tensor's gradient is computed (``fn`` does not change it);
        returns the handle."""

    def remove_hook(self, handle: Handle) -> None:
        """Remove a hook registered by ``add_forward_hooks`` or ``add_grad_hook``."""

    # --- framework calls (API tracing) -------------------------------------------------------
    def api_functional(self) -> Tuple[Any, str]:
        """``(module, dotted name)`` of the functional module (``torch.nn.functional``), whose public
        functions are all wrapped while recording."""

    def api_top_level(self) -> Tuple[Any, str]:
        """``(module, dotted name)`` of the top-level package; the names of :attr:`api_top_level_names`
        that exist in it are wrapped while recording."""

    def api_tensor_class(self) -> Tuple[type, str]:
        """``(class, dotted name)`` of the tensor class; the methods of :attr:`api_tensor_methods` that
        exist on it are wrapped while recording."""

    # --- tensors -----------------------------------------------------------------------------
    def host_view(self, t: Tensor) -> Optional[np.ndarray]:
        """A zero-copy numpy view of a CPU tensor, or None where there is none (an accelerator
        tensor, bfloat16). Whoever keeps it must copy it first."""

    def version(self, tensor: Tensor) -> int:
        """A counter that every in-place change of the tensor bumps (tells a changed value apart)."""

    def fingerprint(self, tensor: Tensor) -> float:
        """The L2 norm of a floating tensor, or of an evenly strided sample of a large one: a cheap
        value that tells calls apart."""

    def requires_grad(self, tensor: Tensor) -> bool:
        """Whether autograd records a gradient for the tensor."""

    def is_floating(self, tensor: Tensor) -> bool:
        """Whether the tensor's dtype is floating point or complex."""

    def detach_requires_grad(self, tensor: Tensor) -> Tensor:
        """A fresh leaf with the same value that records its gradient when it is floating."""

    def from_array(self, array: np.ndarray, dtype_name: str, like: Optional[Tensor] = None) -> Tensor:
        """A new tensor of ``dtype_name`` holding ``array``, on the device of ``like`` (the CPU
        without it)."""

    def mark_requires_grad(self, tensor: Tensor) -> Tensor:
        """Make the tensor record its gradient, in place; returns it."""

    def alias(self, tensor: Tensor) -> Tensor:
        """A copy that is not a leaf: its gradient reaches ``tensor``, and an in-place op may change
        it where it may not change a leaf."""

    def tensor_grad(self, tensor: Tensor) -> Optional[Tensor]:
        """The gradient accumulated on a leaf tensor, or None."""

    # --- autograd ----------------------------------------------------------------------------
    def default_loss(self, tensors: List[Tensor], weights: List[np.ndarray]) -> Tensor:
        """The loss when the user gives none: the sum over the outputs of ``mean(tensor * weight)``
        (``weights``: one array of each tensor's shape, :mod:`padiff.loss`), each term in its
        tensor's dtype."""

    def backward(self, loss: Any, grad: Any = None) -> None:
        """Run backward from ``loss`` (a scalar), or from the tensors ``loss`` with the output
        gradients ``grad``."""

    def param_grad(self, param: Tensor) -> Optional[Tensor]:
        """The parameter's gradient, or None when it has none."""

    def set_grad(self, param: Tensor, grad: Optional[Tensor]) -> None:
        """Set the parameter's gradient to ``grad``; None clears it."""

    def no_grad(self) -> ContextManager:
        """A context manager inside which autograd records nothing."""

    def set_value(self, param: Tensor, array: np.ndarray) -> None:
        """Write ``array`` into the parameter or buffer in place, cast to its dtype and device."""

    # --- optimizers --------------------------------------------------------------------------
    def is_optimizer(self, obj: Any) -> bool:
        """Whether ``obj`` is an optimizer of this framework."""

    def optimizer_step(self, opt: Any) -> None:
        """Take one optimizer step with the gradients in place."""

    def optimizer_lr(self, opt: Any) -> List[float]:
        """The learning rate the optimizer uses now, one per parameter group."""

    # --- learning-rate schedulers ------------------------------------------------------------
    def is_lr_scheduler(self, obj: Any) -> bool:
        """Whether ``obj`` is a learning-rate scheduler of this framework."""

    def scheduler_needs_metric(self, sched: Any) -> bool:
        """Whether the scheduler steps on a metric (ReduceLROnPlateau), which padiff cannot give it."""

    def scheduler_lr(self, sched: Any) -> List[float]:
        """The learning rate the scheduler sets now, one per parameter group (a one-item list where
        the framework has one rate)."""

    def scheduler_step(self, sched: Any) -> None:
        """Step the scheduler once, without the warning about its order against the optimizer's."""

    # --- state files (the checkpoint converter) ----------------------------------------------
    def load_file(self, path: str) -> Any:
        """The object (a state dict) saved in ``path`` by this framework's save; raises what the
        framework raises for a file it cannot read."""

    def save_raw(self, state: Dict[str, Tuple[np.ndarray, str]], path: str) -> None:
        """Save ``{key: (array, dtype name)}`` as this framework's state dict file (arrays of dtypes
        numpy lacks hold the raw bits)."""

    def raw_array(self, tensor: Tensor) -> Tuple[np.ndarray, str]:
        """``(array, dtype name)``, the array possibly a view; for dtypes numpy lacks (bfloat16,
        float8) the raw bits as uint16/uint8."""

    def assign_raw(self, tensor: Tensor, array: np.ndarray, dtype_name: str) -> None:
        """Set a model's tensor in place from an array of ``dtype_name`` (raw bits for dtypes numpy
        lacks), cast to the tensor's dtype."""

    def state_items(self, model: Layer) -> List[Tuple[str, Tensor]]:
        """``(state dict key, the model's own tensor)`` pairs; aliased keys share one tensor."""
