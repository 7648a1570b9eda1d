"""Checkpoint files, read and written one tensor at a time.

A :class:`Checkpoint` is a read-only mapping of tensor names to arrays whose values are read
only when asked for, so a conversion holds one tensor (or one fused group) at a time:

* :class:`SafetensorsCheckpoint`: one ``.safetensors`` file, or the shards listed by a
  ``model.safetensors.index.json`` (Hugging Face's ``save_pretrained``), or a folder holding
  either. The format is read here, without the ``safetensors`` package: an 8-byte
  little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}`` (and an
  optional ``"__metadata__"`` of strings), then the raw little-endian data. Each tensor is
  memory-mapped on its own when read and unmapped when its array is dropped, so the pages of
  the tensors already converted leave the process.
* :class:`StateDictCheckpoint`: a state dict loaded by a framework (``torch.load`` with
  ``weights_only`` and, for zip files, ``mmap``; ``paddle.load``), or a dict passed in.

Types numpy lacks (bfloat16, float8) travel as their raw bits (``uint16``, ``uint8``) with
their dtype name beside them (:class:`TensorInfo`); moving elements about (transposes,
slices, concatenations: every shipped conversion rule) works on the bits as on the values, so
a bfloat16 checkpoint converts bit for bit. The adapters turn bits into framework tensors.

:class:`SafetensorsWriter` writes ``.safetensors`` files: the names, shapes and dtypes come
first (the header is written before any data), then each tensor is written at its place as it
comes, in any order; with ``max_shard_size`` the tensors are spread over several files named
as Hugging Face names them, with the index (``weight_map`` and ``metadata.total_size``).

This module imports no framework; framework files go through the adapters.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import PadiffError
from ..frameworks import adapter_for_value, adapters, get_adapter

# safetensors dtype code -> (numpy storage dtype, dtype name). Names are torch's spelling.
ST_DTYPES: Dict[str, Tuple[str, str]] = {
    "F64": ("<f8", "float64"), "F32": ("<f4", "float32"), "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"), "F8_E4M3": ("u1", "float8_e4m3fn"), "F8_E5M2": ("u1", "float8_e5m2"),
    "I64": ("<i8", "int64"), "I32": ("<i4", "int32"), "I16": ("<i2", "int16"), "I8": ("i1", "int8"),
    "U64": ("<u8", "uint64"), "U32": ("<u4", "uint32"), "U16": ("<u2", "uint16"), "U8": ("u1", "uint8"),
    "BOOL": ("?", "bool"), "C64": ("<c8", "complex64"), "C128": ("<c16", "complex128"),
}
_CODE_OF = {name: code for code, (_, name) in ST_DTYPES.items()}
# dtype names numpy has no type for: their arrays hold the raw bits in this storage type.
RAW_BITS = {"bfloat16": np.dtype("uint16"), "float8_e4m3fn": np.dtype("uint8"), "float8_e5m2": np.dtype("uint8")}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40, "K": 10 ** 3, "M": 10 ** 6,
          "G": 10 ** 9, "T": 10 ** 12}


def storage_dtype(dtype_name: str) -> np.dtype:
    """The numpy type an array of this dtype name is held in (raw bits for bfloat16, float8)."""
    if dtype_name in RAW_BITS:
        return RAW_BITS[dtype_name]
    try:
        return np.dtype(dtype_name)
    except TypeError:
        raise PadiffError(f"padiff cannot hold tensors of dtype {dtype_name} as arrays.") from None


def parse_size(size) -> Optional[int]:
    """``"5GB"``, ``"500MiB"``, ``10_000`` -> bytes (None stays None); Hugging Face's spelling."""
    if size is None or isinstance(size, int):
        return size
    m = _SIZE.match(str(size))
    if not m or (m.group(2) or "").upper() not in _UNITS:
        raise PadiffError(f"A shard size is a number of bytes with an optional unit (5GB, 500MB, 200MiB); "
                          f"got `{size}`.")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


@dataclass(frozen=True)
class TensorInfo:
    """What a checkpoint says about one tensor before it is read."""

    name: str
    shape: Tuple[int, ...]
    dtype: str  # dtype name: float32, bfloat16, int64, ...

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * storage_dtype(self.dtype).itemsize


# --- reading ----------------------------------------------------------------------------------

class Checkpoint:
    """A read-only mapping name -> array whose values are read when asked for.

    ``framework`` is the framework whose layout the tensors are in ("torch", "paddle", or None
    when the file does not say); ``dropped`` lists entries that are not tensors
    ``(key, why)``; ``notes`` what was done to read it (a wrapper key unwrapped, ...)."""

    path: str = ""
    kind: str = ""  # "safetensors", "torch file", "paddle file", "state dict"
    framework: Optional[str] = None
    metadata: Dict[str, str]

    def __init__(self):
        self.metadata = {}
        self.dropped: List[Tuple[str, str]] = []
        self.notes: List[str] = []
        self._infos: "OrderedDict[str, TensorInfo]" = OrderedDict()

    def keys(self) -> List[str]:
        return list(self._infos)

    def info(self, key: str) -> TensorInfo:
        return self._infos[key]

    def infos(self) -> List[TensorInfo]:
        return list(self._infos.values())

    def array(self, key: str) -> np.ndarray:
        """The tensor's values (its raw bits for bfloat16/float8); read-only, often a view of the file."""
        raise NotImplementedError

    def __contains__(self, key) -> bool:
        return key in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.array(key)

    def items(self):
        for k in self._infos:
            yield k, self.array(k)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_safetensors_header(path: str) -> Tuple[dict, int]:
    """(the JSON header, the offset of the data) of one ``.safetensors`` file."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise PadiffError(f"`{path}` is not a safetensors file: it is shorter than its 8-byte header length.")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2 ** 20:
            raise PadiffError(f"`{path}` is not a safetensors file: its header length ({n} bytes) does not fit "
                              f"the file ({size} bytes).")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PadiffError(f"`{path}` is not a safetensors file: its header is not JSON ({exc}).") from None
    if not isinstance(header, dict):
        raise PadiffError(f"`{path}` is not a safetensors file: its header is not a JSON object.")
    return header, 8 + n


class SafetensorsCheckpoint(Checkpoint):
    """One or more ``.safetensors`` files (shards of one checkpoint), read tensor by tensor."""

    kind = "safetensors"

    def __init__(self, files: Sequence[str], path: str = ""):
        super().__init__()
        self.path = path or files[0]
        self.files = list(files)
        self._where: Dict[str, Tuple[str, int, int]] = {}  # name -> (file, start, end) in bytes
        for file in self.files:
            header, base = read_safetensors_header(file)
            size = os.path.getsize(file)
            meta = header.pop("__metadata__", None) or {}
            if isinstance(meta, dict):
                for k, v in meta.items():
                    self.metadata.setdefault(str(k), str(v))
            for name, entry in header.items():
                try:
                    code, shape, (lo, hi) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
                except (KeyError, TypeError, ValueError):
                    raise PadiffError(f"`{file}`: the header entry of `{name}` is not "
                                      "{dtype, shape, data_offsets}.") from None
                if code not in ST_DTYPES:
                    raise PadiffError(f"`{file}`: `{name}` has dtype {code}, which padiff does not read "
                                      f"(it reads {', '.join(ST_DTYPES)}).")
                info = TensorInfo(name, shape, ST_DTYPES[code][1])
                if hi - lo != info.nbytes or lo < 0 or base + hi > size:
                    raise PadiffError(f"`{file}`: `{name}` ({code} {list(shape)}, {info.nbytes} bytes) has data "
                                      f"offsets [{lo}, {hi}], which do not fit it or the file: the file is "
                                      "damaged or cut short.")
                if name in self._infos:
                    raise PadiffError(f"`{name}` is in two shards of `{self.path}`.")
                self._infos[name] = info
                self._where[name] = (file, base + lo, base + hi)

    @property
    def framework(self) -> Optional[str]:
        """The framework the metadata's ``format`` names (an adapter's ``safetensors_formats``)."""
        fmt = self.metadata.get("format", "").lower()
        return next((ad.name for ad in adapters() if fmt in ad.safetensors_formats), None) if fmt else None

    def array(self, key: str) -> np.ndarray:
        info = self._infos[key]
        file, lo, hi = self._where[key]
        dtype = np.dtype(ST_DTYPES[_CODE_OF[info.dtype]][0])
        count = int(np.prod(info.shape, dtype=np.int64))
        if hi == lo:
            return np.zeros(info.shape, dtype)
        start = lo - lo % mmap.ALLOCATIONGRANULARITY
        with open(file, "rb") as fh:
            # The mapping lives as long as the array does: it is unmapped when the array is dropped.
            mapped = mmap.mmap(fh.fileno(), hi - start, access=mmap.ACCESS_READ, offset=start)
        arr = np.frombuffer(mapped, dtype=dtype, count=count, offset=lo - start).reshape(info.shape)
        return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


class StateDictCheckpoint(Checkpoint):
    """A state dict of framework tensors (loaded from a file, or passed in), read through the
    framework's adapter. Nested checkpoints are unwrapped (``{"state_dict": ...}``) and a
    DataParallel ``module.`` prefix is removed."""

    _WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "net", "network")

    def __init__(self, obj, adapter=None, path: str = "", kind: str = "state dict"):
        super().__init__()
        self.path, self.kind = path, kind
        if not hasattr(obj, "items"):
            raise PadiffError(f"The checkpoint holds a {type(obj).__name__}, not a state dict: save "
                              "model.state_dict(), not the model.")
        for _ in range(3):
            if any(_is_tensor(adapter_for_value(v) or adapter, v) for v in obj.values()):
                break
            inner = next((k for k in self._WRAPPERS if hasattr(obj.get(k), "items")), None)
            if inner is None:
                break
            self.notes.append(f"took the state dict under the checkpoint's `{inner}` key")
            obj = obj[inner]
        self._tensors: Dict[str, object] = OrderedDict()
        ads = []
        for k, v in obj.items():
            ad = adapter_for_value(v) or adapter
            if isinstance(v, np.ndarray):
                self._tensors[str(k)] = (None, v)
                self._infos[str(k)] = TensorInfo(str(k), tuple(v.shape), str(v.dtype))
            elif _is_tensor(ad, v):
                ads.append(ad)
                self._tensors[str(k)] = (ad, v)
                self._infos[str(k)] = TensorInfo(str(k), tuple(ad.shape(v)), ad.dtype_name(v))
            else:
                self.dropped.append((str(k), f"not a tensor ({type(v).__name__})"))
        if self._infos and all(k.startswith("module.") for k in self._infos):
            self._tensors = OrderedDict((k[len("module."):], v) for k, v in self._tensors.items())
            self._infos = OrderedDict((k[len("module."):], TensorInfo(k[len("module."):], i.shape, i.dtype))
                                      for k, i in self._infos.items())
            self.notes.append("removed the `module.` prefix (a DataParallel checkpoint)")
        names = {a.name for a in ads}
        self.framework = names.pop() if len(names) == 1 else (adapter.name if adapter is not None else None)

    def array(self, key: str) -> np.ndarray:
        ad, v = self._tensors[key]
        if ad is None:
            return v
        arr, _ = ad.raw_array(v)
        return arr


def _is_tensor(ad, v) -> bool:
    return ad is not None and ad.is_tensor(v)


def _safetensors_files(path: str) -> Optional[Tuple[List[str], str]]:
    """The shard files of a safetensors path (a file, an index, a folder), or None."""
    if os.path.isdir(path):
        for name in (INDEX_NAME, SINGLE_NAME):
            if os.path.isfile(os.path.join(path, name)):
                return _safetensors_files(os.path.join(path, name))
        found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors.index.json"))
        if len(found) == 1:
            return _safetensors_files(os.path.join(path, found[0]))
        found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if len(found) == 1:
            return [os.path.join(path, found[0])], path
        return None
    if path.endswith(".json"):
        try:
            with open(path) as fh:
                index = json.load(fh)
            weight_map = index["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PadiffError(f"`{path}` is not a safetensors index (a JSON with a `weight_map`): {exc}") from None
        folder = os.path.dirname(path)
        files = list(OrderedDict.fromkeys(os.path.join(folder, f) for f in weight_map.values()))
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise PadiffError(f"The index `{path}` names shard `{os.path.basename(missing[0])}`, which is not "
                              f"beside it ({len(missing)} of {len(files)} shards missing).")
        return files, path
    if path.endswith(".safetensors"):
        return [path], path
    return None


def _model_file_in(folder: str) -> Optional[str]:
    """The framework state file a folder holds: one of the names the adapters declare, else its
    only file with one of their suffixes."""
    ads = list(adapters())
    for name in (n for ad in ads for n in ad.state_file_names):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    suffixes = tuple(s for ad in ads for s in ad.state_file_suffixes)
    found = sorted(f for f in os.listdir(folder) if f.endswith(suffixes))
    return os.path.join(folder, found[0]) if len(found) == 1 else None


def _writer_of(path: str):
    """The adapter whose framework wrote a state file, by its suffix (or as a zip archive); None
    when no suffix tells."""
    lower = path.lower()
    found = next((ad for ad in adapters() if lower.endswith(ad.state_file_suffixes)), None)
    if found is None and zipfile.is_zipfile(path):
        found = next((ad for ad in adapters() if ad.state_file_zip), None)
    return found


def open_checkpoint(src, framework: Optional[str] = None) -> Checkpoint:
    """A checkpoint from a path (``.safetensors``, a safetensors index, ``.pth``/``.bin``,
    ``.pdparams``, or a folder holding one of them, as ``save_pretrained`` leaves it) or from
    a state dict. ``framework`` says which framework wrote a file whose name does not tell
    (a ``.pt`` saved by paddle, say)."""
    if not isinstance(src, (str, os.PathLike)):
        return StateDictCheckpoint(src, get_adapter(framework) if framework else None)
    path = os.fspath(src)
    if not os.path.exists(path):
        raise PadiffError(f"The checkpoint `{path}` does not exist.")
    st = _safetensors_files(path)
    if st is not None:
        files, shown = st
        return SafetensorsCheckpoint(files, shown)
    if os.path.isdir(path):
        found = _model_file_in(path)
        if found is None:
            names = ", ".join(n for ad in adapters() for n in ad.state_file_names)
            raise PadiffError(f"The folder `{path}` holds no checkpoint padiff recognises (model.safetensors, "
                              f"{INDEX_NAME}, {names}).")
        path = found
    ad = get_adapter(framework) if framework else _writer_of(path)
    if ad is None:
        ads = list(adapters())
        raise PadiffError(f"padiff cannot tell which framework wrote `{path}`: name it "
                          f"{', '.join(f'{a.state_file_label} ({a.name})' for a in ads)} or .safetensors, or say it "
                          f"({' / '.join(f'--from {a.name}' for a in ads)}).")
    name = ad.name
    try:
        obj = ad.load_file(path)
    except Exception as exc:  # a file the framework cannot read: the user's to fix
        raise PadiffError(f"{name} could not read `{path}` as a checkpoint ({type(exc).__name__}: {exc}). "
                          f"Pass a file written by {ad.save_call}.") from exc
    return StateDictCheckpoint(obj, ad, path, f"{name} file")


# --- writing ----------------------------------------------------------------------------------

def _header_bytes(entries: Sequence[TensorInfo], offsets: Sequence[Tuple[int, int]],
                  metadata: Optional[Mapping[str, str]]) -> bytes:
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for info, (lo, hi) in zip(entries, offsets):
        header[info.name] = {"dtype": _CODE_OF[info.dtype], "shape": list(info.shape), "data_offsets": [lo, hi]}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as the safetensors package writes it
    return struct.pack("<Q", len(raw)) + raw


def shard_names(path: str, count: int) -> List[str]:
    """``out/model.safetensors`` in 3 shards -> ``out/model-00001-of-00003.safetensors``, ..."""
    if count == 1:
        return [path]
    stem = path[:-len(".safetensors")] if path.endswith(".safetensors") else path
    return [f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def safetensors_target(path: str) -> str:
    """The file a safetensors destination names: a folder (existing, or written with a trailing
    slash) gets ``model.safetensors``."""
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        return os.path.join(path, SINGLE_NAME)
    return path


class SafetensorsWriter:
    """Writes tensors into one ``.safetensors`` file, or into shards with an index.

    The names, shapes and dtypes are given first; headers are written then, and each tensor's
    bytes go to their place when :meth:`write` is called (in any order). :meth:`close` checks
    that every tensor was written and writes the index of a sharded checkpoint. A tensor larger
    than ``max_shard_size`` gets a shard of its own, as in Hugging Face's ``save_pretrained``."""

    def __init__(self, path, entries: Sequence[TensorInfo], metadata: Optional[Mapping[str, str]] = None,
                 max_shard_size=None):
        path = safetensors_target(os.fspath(path))
        limit = parse_size(max_shard_size)
        self.entries = list(entries)
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise PadiffError(f"Two tensors named `{next(n for n in names if names.count(n) > 1)}` to write.")
        for e in self.entries:
            if e.dtype not in _CODE_OF:
                raise PadiffError(f"`{e.name}` has dtype {e.dtype}, which safetensors has no code for.")
        groups: List[List[TensorInfo]] = [[]]
        size = 0
        for e in self.entries:
            if limit is not None and groups[-1] and size + e.nbytes > limit:
                groups.append([])
                size = 0
            groups[-1].append(e)
            size += e.nbytes
        self.files = shard_names(path, len(groups))
        self.index_path = (path[:-len(".safetensors")] if path.endswith(".safetensors") else path) + \
            ".safetensors.index.json" if len(groups) > 1 else None
        if self.index_path is not None and os.path.basename(path) == SINGLE_NAME:
            self.index_path = os.path.join(os.path.dirname(path), INDEX_NAME)
        self.total_size = sum(e.nbytes for e in self.entries)
        self._place: Dict[str, Tuple[int, int, int]] = {}  # name -> (file index, start, nbytes)
        self._done: Dict[str, bool] = {}
        self._handles = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            for i, (file, group) in enumerate(zip(self.files, groups)):
                offsets, at = [], 0
                for e in group:
                    offsets.append((at, at + e.nbytes))
                    at += e.nbytes
                head = _header_bytes(group, offsets, metadata)
                fh = open(file, "wb")
                self._handles.append(fh)
                fh.write(head)
                fh.truncate(len(head) + at)
                for e, (lo, _) in zip(group, offsets):
                    self._place[e.name] = (i, len(head) + lo, e.nbytes)
        except BaseException:
            self.abort()
            raise
        self._by_name = {e.name: e for e in self.entries}

    def write(self, name: str, array: np.ndarray) -> None:
        """Write one tensor's values (raw bits for bfloat16/float8), in the declared shape and dtype."""
        info = self._by_name.get(name)
        if info is None:
            raise PadiffError(f"`{name}` was not declared to the safetensors writer.")
        arr = np.asarray(array)
        want = storage_dtype(info.dtype)
        if arr.dtype != want or tuple(arr.shape) != tuple(info.shape):
            raise PadiffError(f"`{name}` is {arr.dtype} {list(arr.shape)}, but {info.dtype} {list(info.shape)} "
                              "was declared.")
        i, start, nbytes = self._place[name]
        fh = self._handles[i]
        fh.seek(start)
        arr = np.ascontiguousarray(arr)
        if not arr.dtype.isnative or arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if nbytes:
            fh.write(memoryview(arr.reshape(-1)).cast("B"))
        self._done[name] = True

    def close(self) -> List[str]:
        """Check that every tensor was written, close the files, write the index; the files written."""
        missing = [e.name for e in self.entries if e.name not in self._done]
        if missing:
            self.abort()
            raise PadiffError(f"{len(missing)} tensor(s) were declared but never written ({', '.join(missing[:3])}).")
        for fh in self._handles:
            fh.close()
        self._handles = []
        written = list(self.files)
        if self.index_path is not None:
            weight_map = {e.name: os.path.basename(self.files[self._place[e.name][0]]) for e in self.entries}
            with open(self.index_path, "w") as fh:
                json.dump({"metadata": {"total_size": self.total_size}, "weight_map": weight_map}, fh, indent=2)
                fh.write("\n")
            written.append(self.index_path)
        return written

    def abort(self) -> None:
        for fh in self._handles:
            fh.close()
        self._handles = []
        for f in self.files:
            if os.path.exists(f):
                os.remove(f)



def write_safetensors(path, tensors: Mapping[str, Tuple[np.ndarray, str]], metadata=None,
                      max_shard_size=None) -> List[str]:
    """Write ``{name: (array, dtype name)}`` (arrays of raw bits for bfloat16/float8); the files written."""
    entries = [TensorInfo(n, tuple(np.shape(a)), d) for n, (a, d) in tensors.items()]
    writer = SafetensorsWriter(path, entries, metadata, max_shard_size)
    try:
        for n, (a, _) in tensors.items():
            writer.write(n, a)
    except BaseException:
        writer.abort()
        raise
    return writer.close()
