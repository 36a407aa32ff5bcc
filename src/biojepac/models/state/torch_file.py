"""Read the files `torch.save` writes (a Lightning `.ckpt`, arc-state's `.pt` / `.torch` maps) without torch.

A torch file is a zip: `<root>/data.pkl` is a pickle whose tensors point, by a persistent id
`("storage", <dtype class>, key, location, numel)`, at raw little-endian buffers `<root>/data/<key>`, and are
rebuilt by `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`. This module unpickles
`data.pkl` with an allow-list of globals (plain containers, NumPy scalars, the tensor rebuilders), so a file
cannot run code, and turns each tensor into a NumPy array. Any other global is refused with its name.
"""

import collections
import pathlib
import pickle
import zipfile

import numpy as np

from biojepac.errors import InputError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}


class _Storage:
    """Marker for a typed storage class named in the pickle (its element type)."""

    def __init__(self, name: str):
        self.name = name

    def dtype(self) -> np.dtype:
        kind = _STORAGE_DTYPES[self.name]
        if kind == "bfloat16":
            import ml_dtypes  # ships with jax

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(kind)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_rest) -> np.ndarray:
    """A tensor view (offset, size, stride in elements) of a flat storage, copied into its own array."""
    if len(size) == 0:
        return storage[offset].copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride))
    return np.array(view)


def _numpy_scalar(dtype: np.dtype, data: bytes):
    """A pickled NumPy scalar (np.str_ keys, np.float32 scores) from its dtype and raw bytes; no object dtype."""
    assert dtype != np.dtype(object), "object-dtype NumPy scalars are not read"
    return np.frombuffer(data, dtype=dtype)[0]


def _rebuild_parameter(data, *_rest):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): lambda dtype, data=b"": _numpy_scalar(dtype, data),
    ("numpy._core.multiarray", "scalar"): lambda dtype, data=b"": _numpy_scalar(dtype, data),
    ("_codecs", "encode"): lambda text, encoding="latin1": text.encode(encoding),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh, archive: zipfile.ZipFile, root: str, source: str):
        super().__init__(fh)
        self.archive, self.root, self.source = archive, root, source
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(name)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise InputError(f"{self.source}: holds a {module}.{name} object, which biojepac does not read "
                             "(only tensors, numbers, strings and containers)")
        return found

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        assert kind == "storage" and isinstance(storage_type, _Storage), f"{self.source}: unknown record {pid!r}"
        if key not in self.storages:
            raw = self.archive.read(f"{self.root}/data/{key}")
            self.storages[key] = np.frombuffer(raw, dtype=storage_type.dtype().newbyteorder("<"), count=numel)
        return self.storages[key]


def load(fpath: pathlib.Path):
    """The object a `torch.save` file holds, with every tensor as a NumPy array."""
    fpath = pathlib.Path(fpath)
    if not zipfile.is_zipfile(fpath):
        raise InputError(f"{fpath}: not a torch zip file (torch.save with the default, zip-based format)")
    with zipfile.ZipFile(fpath) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise InputError(f"{fpath}: no single <root>/data.pkl inside; not a torch.save file")
        root = pkl[0].split("/")[0]
        byteorder = f"{root}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise InputError(f"{fpath}: big-endian tensors are not supported")
        with archive.open(pkl[0]) as fh:
            return _Unpickler(fh, archive, root, str(fpath)).load()


class _PlainUnpickler(pickle.Unpickler):
    """The same allow-list for a plain pickle (arc-state's `var_dims.pkl`, legacy `.pkl` maps)."""

    def __init__(self, fh, source: str):
        super().__init__(fh)
        self.source = source

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise InputError(f"{self.source}: holds a {module}.{name} object, which biojepac does not read")
        return found


def load_pickle(fpath: pathlib.Path):
    """A plain pickle file, read with the allow-list (no code runs)."""
    with open(fpath, "rb") as fh:
        return _PlainUnpickler(fh, str(fpath)).load()
