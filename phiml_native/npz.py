"""Safe, fast reading of files written by `phiml.math.save`, without running any code the file carries.

`phiml.math.save` writes an uncompressed `.npz` (a zip of `.npy` members): `tree` (a pickled structure with `None`
where a tensor goes and `'__native__'` where a plain array goes), `specs` (pickled dicts: dim names, types, item names,
sizes), `paths` (unicode array) and one member `<path>:0` per array. `phiml.math.load` unpickles `tree` with
`allow_pickle=True`, so a crafted file executes code. Here the two pickled members go through an unpickler that admits
only numpy's own array reconstruction and plain containers, and arrays are read straight from their byte offset.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from phiml import math
from phiml.math import Tensor

from harness.errors import CacheError

_ALLOWED_GLOBALS = {
    ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
}
_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))
_DIM_TYPES = {'batch': math.batch, 'spatial': math.spatial, 'channel': math.channel, 'instance': math.instance,
              'dual': math.dual}
_LOCAL_HEADER = struct.Struct('<4s2B4HL2L2H')  # zip local file header, 30 bytes


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def read_phiml_npz(path: Path, mmap: bool = False) -> Any:
    """Reads a `phiml.math.save` file into the structure it was saved from (tensors backed by numpy).

    Args:
        path: `.npz` file.
        mmap: Memory-map the arrays instead of reading them (read-only views into the file).

    Raises:
        CacheError: the file is missing, not a zip, not in phiml's format, or carries anything but plain data.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename: info for info in zf.infolist()}
            for required in ('tree.npy', 'specs.npy', 'paths.npy'):
                if required not in members:
                    raise CacheError(f"{path}: not a phiml.math.save file (member {required!r} missing)")
            tree = _unpickle_member(path, zf, 'tree.npy')
            specs = _unpickle_member(path, zf, 'specs.npy')
            paths = np.lib.format.read_array(zf.open('paths.npy'), allow_pickle=False).tolist()
            if not isinstance(tree, dict) or 'tree' not in tree:
                raise CacheError(f"{path}: member 'tree' is {type(tree).__name__}, expected {{'tree': ...}}")
            tree = tree['tree']
            _check_plain(path, tree, 'tree')
            _check_plain(path, specs, 'specs')
            arrays = {name[:-4]: _read_member(path, zf, info, mmap) for name, info in members.items()
                      if name not in ('tree.npy', 'specs.npy', 'paths.npy')}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as err:
        if isinstance(err, CacheError):
            raise
        raise CacheError(f"{path}: not a readable .npz file ({str(err).splitlines()[0][:200]})") from None
    if len(specs) != len(paths):
        raise CacheError(f"{path}: {len(specs)} specs for {len(paths)} paths (expected one spec per path)")
    tensors = {p: _tensor(path, p, spec, arrays) for p, spec in zip(paths, specs)}
    return _assemble(path, tree, 'root', tensors, arrays)


def _unpickle_member(path: Path, zf: zipfile.ZipFile, name: str) -> Any:
    with zf.open(name) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
        if dtype != np.dtype(object):
            raise CacheError(f"{path}: member {name!r} has dtype {dtype}, expected a pickled object array")
        try:
            array = _RestrictedUnpickler(io.BytesIO(f.read())).load()
        except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError) as err:
            raise CacheError(f"{path}: refused to unpickle member {name!r}: {err}; a cache may hold only tensors and "
                             f"plain containers (dict, list, str, numbers)") from None
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise CacheError(f"{path}: member {name!r} is not an object array")
    return array.tolist()


def _check_plain(path: Path, obj: Any, where: str) -> None:
    if not isinstance(obj, _PLAIN):
        raise CacheError(f"{path}: {where} holds a {type(obj).__name__}, expected only plain containers and values")
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(path, key, where)
            _check_plain(path, value, where)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _check_plain(path, value, where)


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, mmap: bool) -> np.ndarray:
    if info.compress_type != zipfile.ZIP_STORED:
        return np.lib.format.read_array(zf.open(info), allow_pickle=False)
    fp = zf.fp
    fp.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(fp.read(_LOCAL_HEADER.size))
    if fields[0] != b'PK\x03\x04':
        raise CacheError(f"{path}: corrupt zip entry {info.filename!r}")
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    fp.seek(start)
    version = np.lib.format.read_magic(fp)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(fp)
    if dtype.hasobject:
        raise CacheError(f"{path}: array member {info.filename!r} holds Python objects, expected numbers")
    count = int(np.prod(shape))
    offset = fp.tell()
    if offset - start + count * dtype.itemsize != info.file_size:
        raise CacheError(f"{path}: member {info.filename!r} is {info.file_size} bytes, its header announces "
                         f"{offset - start + count * dtype.itemsize} (truncated or corrupt)")
    order = 'F' if fortran else 'C'
    if mmap and count:
        return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape, order=order)
    data = np.empty(count, dtype)
    if fp.readinto(memoryview(data).cast('B')) != count * dtype.itemsize:
        raise CacheError(f"{path}: member {info.filename!r} ends early (truncated file)")
    return data.reshape(shape, order=order)


def _tensor(path: Path, p: str, spec: Any, arrays: dict[str, np.ndarray]) -> Tensor:
    try:
        if spec['type'] != 'dense':
            raise CacheError(f"{path}: tensor {p!r} is stored as {spec['type']!r}, only dense tensors are supported")
        shape_spec = spec['shape']
        native = arrays[f'{p}:0']
        dims = []
        for name, dim_type, items, size in zip(shape_spec['names'], shape_spec['types'], shape_spec['item_names'],
                                                shape_spec['sizes']):
            dims.append(_DIM_TYPES[dim_type](**{name: tuple(items) if items else size}))
        by_name = {d.name: d for d in dims}
        return math.wrap(native, *[by_name[n] for n in spec['names']]) if dims else math.wrap(native)
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise CacheError(f"{path}: tensor {p!r} does not match its spec ({type(err).__name__}: {err})") from None


def _assemble(path: Path, node: Any, p: str, tensors: dict[str, Tensor], arrays: dict[str, np.ndarray]) -> Any:
    if node is None:
        if p not in tensors:
            raise CacheError(f"{path}: no array stored for tensor {p!r}")
        return tensors[p]
    if node == '__native__':
        value = arrays[f'{p}:0']  # the stored array as is: wrapping it in a Tensor could cast it to the default precision
        return value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if isinstance(node, dict):
        return {k: _assemble(path, v, f'{p}[{k}]', tensors, arrays) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        items = [_assemble(path, v, f'{p}[{i}]', tensors, arrays) for i, v in enumerate(node)]
        return tuple(items) if isinstance(node, tuple) else items
    return node
