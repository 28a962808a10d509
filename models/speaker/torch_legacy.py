"""Read a checkpoint in torch's legacy (pre-1.6, not zip) format without torch.

The file is five pickles back to back (magic, protocol, sys info, the object,
the storage keys) and then each storage as an int64 element count plus its
raw little-endian bytes. Unpickling is restricted to the few globals such a
checkpoint of float tensors uses, so a tampered file cannot run code: anything
else is refused.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64}


@dataclass
class _TensorRef:
    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _StorageType:
    name: str


def _rebuild_tensor_v2(
    storage: tuple[str, str], offset: int, size: Any, stride: Any, *_: Any
) -> _TensorRef:
    return _TensorRef(storage[0], int(offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__(fh)
        self.storages: dict[str, str] = {}  # key -> storage type name

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        raise pickle.UnpicklingError(f"refused global {module}.{name} in a weights file")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel, view metadata)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        kind = pid[1]
        if not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {kind!r}")
        self.storages[str(pid[2])] = kind.name
        return (str(pid[2]), kind.name)


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles, which hold only ints, strings and dicts."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name} in a weights file")


def load_legacy(path: Path) -> Any:
    """The checkpoint object, with every tensor replaced by a numpy array."""
    with Path(path).open("rb") as fh:
        if _PlainUnpickler(fh).load() != MAGIC:
            raise ValueError(f"{path}: not a legacy torch checkpoint (magic number)")
        _PlainUnpickler(fh).load()  # protocol version
        sys_info = _PlainUnpickler(fh).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoint")
        unpickler = _RestrictedUnpickler(fh)
        obj = unpickler.load()
        keys = _PlainUnpickler(fh).load()
        data: dict[str, np.ndarray] = {}
        for key in keys:
            (count,) = struct.unpack("<q", fh.read(8))
            dtype = np.dtype(_DTYPES[unpickler.storages[str(key)]]).newbyteorder("<")
            raw = fh.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{path}: truncated storage {key}")
            data[str(key)] = np.frombuffer(raw, dtype=dtype)
    return _resolve(obj, data)


def _resolve(obj: Any, data: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _TensorRef):
        buf = data[obj.key]
        # Several tensors can be views into one storage (cuDNN's flat LSTM
        # weights): honour offset and strides rather than splitting by size.
        view = np.lib.stride_tricks.as_strided(
            buf[obj.offset :], obj.size, tuple(s * buf.itemsize for s in obj.stride)
        )
        return np.array(view)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, data)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, data) for v in obj)
    return obj
