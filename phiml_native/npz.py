"""Safe, fast reading of files written by `phiml.math.save`, without running any code the file carries.

`phiml.math.save` writes an uncompressed `.npz` (a zip of `.npy` members): `tree` (a pickled structure with `None`
where a tensor goes and `'__native__'` where a plain array goes), `specs` (pickled dicts: dim names, types, item names,
sizes), `paths` (unicode array) and one member `<path>:0` per array. `phiml.math.load` unpickles `tree` with
`allow_pickle=True`, so a crafted file executes code. Here the two pickled members go through an unpickler that admits
only numpy's own array reconstruction and plain containers, and arrays are read straight from their byte offset.

Speed: a cache file holds one large array per field and a dozen tiny ones (the metadata numbers), so per-member parsing
decides how fast a small sim reads. The first file of a given size is parsed in full (`_parse_layout`): zip directory
(`zipdir`), local and `.npy` headers, pickles. The result, a `_Layout`, says where every array's data lies and which
bytes carry structure. The next file of that size (the other sims of a cache) is read with two reads of those regions;
if every structural byte equals the first file's (all but array data, timestamps and CRCs), the file has the same
structure and only its array data is read; otherwise it is parsed in full. `clear_caches` forgets the layouts.
Archives other than the plain kind `phiml.math.save` writes (compressed, ZIP64, comments) are read with `zipfile`.
"""
from __future__ import annotations

import functools
import io
import math
import mmap as mmap_module
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from phiml.backend import NUMPY
from phiml.math import Shape

from harness.errors import CacheError
from .tensors import dense, shape_of
from .zipdir import TIMESTAMP_AND_CRC, Directory, read_directory

_ALLOWED_GLOBALS = {
    ('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
}
_PLAIN = frozenset((dict, list, tuple, str, int, float, bool, type(None)))
_LOCAL_HEADER = struct.Struct('<4s22xHH')  # zip local file header (30 bytes): signature, name and extra lengths
_LOCAL_TIMESTAMP_AND_CRC = (10, 18)
_HEAD_READ = 4096  # bytes read at once while parsing: a member's zip and .npy headers, and all of a tiny member
_NPY_MAGIC = b'\x93NUMPY'
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[A-Za-z]\d*)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}")
_META_MEMBERS = ('tree.npy', 'specs.npy', 'paths.npy')
_MAX_LAYOUTS = 32


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


class _Spot(NamedTuple):
    """Where an array member's data lies: file offset and size, how to read it, and its position in the region
    buffer when it lies inside a region (tiny members), else None."""
    name: str  # the member name without '.npy', e.g. 'root[velocity]:0'
    offset: int
    size: int
    dtype: np.dtype
    shape: tuple
    order: str
    in_buffer: int | None


class _TensorLeaf(NamedTuple):
    name: str
    shape: Shape


class _NativeLeaf(NamedTuple):
    name: str


@dataclass(frozen=True, eq=False)
class _Layout:
    """The structure of one file, valid for every file of the same size whose structural bytes are identical."""
    file_size: int
    regions: tuple[tuple[int, int], ...]  # byte ranges read per file: all structure and the tiny arrays
    check_index: np.ndarray  # positions, in the concatenated regions, of every structural byte
    check_bytes: np.ndarray  # their values in the file the layout was parsed from
    spots: tuple[_Spot, ...]
    recipe: Any  # the saved tree with `_TensorLeaf` / `_NativeLeaf` where the arrays go

    def read_regions(self, fp: BinaryIO) -> bytes:
        parts = []
        for start, end in self.regions:
            fp.seek(start)
            parts.append(fp.read(end - start))
        return parts[0] if len(parts) == 1 else b''.join(parts)

    def matches(self, buffer: bytes) -> bool:
        """Whether the regions read from a file hold exactly this layout's structural bytes."""
        return len(buffer) == sum(end - start for start, end in self.regions) and \
            np.array_equal(np.frombuffer(buffer, np.uint8)[self.check_index], self.check_bytes)

    def read_arrays(self, path: Path, fp: BinaryIO, buffer: bytes, mmap: bool) -> dict[str, np.ndarray]:
        arrays = {}
        for spot in self.spots:
            count = spot.size // spot.dtype.itemsize if spot.dtype.itemsize else 0
            if spot.in_buffer is not None:
                flat = np.frombuffer(buffer, spot.dtype, count, spot.in_buffer)
                arrays[spot.name] = flat.reshape(spot.shape, order=spot.order).copy()
            elif mmap:
                arrays[spot.name] = _mapped(fp, spot.offset, spot.size, spot.dtype, count).reshape(spot.shape, order=spot.order)
            else:
                data = np.empty(count, spot.dtype)
                fp.seek(spot.offset)
                if fp.readinto(memoryview(data).cast('B')) != spot.size:
                    raise CacheError(f"{path}: member {spot.name + '.npy'!r} ends early (truncated file)")
                arrays[spot.name] = data.reshape(spot.shape, order=spot.order)
        return arrays


_LAYOUTS: dict[int, _Layout] = {}


def read_phiml_npz(path: Path, mmap: bool = False) -> Any:
    """Reads a `phiml.math.save` file into the structure it was saved from (tensors backed by numpy).

    Args:
        path: `.npz` file.
        mmap: Memory-map the large arrays instead of reading them (read-only views into the file). Tiny arrays (the
            metadata numbers) are read either way, and so is every array of an archive that is not a plain zip.

    Raises:
        CacheError: the file is missing, not a zip, not in phiml's format, or carries anything but plain data.
    """
    path = Path(path)
    try:
        with open(path, 'rb') as fp:
            layout = _LAYOUTS.get(os.fstat(fp.fileno()).st_size)
            buffer = layout.read_regions(fp) if layout else b''
            if layout is None or not layout.matches(buffer):
                directory = read_directory(fp)
                if directory is None:
                    return _read_with_zipfile(path, fp)
                layout = _parse_layout(path, fp, directory)
                if len(_LAYOUTS) >= _MAX_LAYOUTS:
                    _LAYOUTS.pop(next(iter(_LAYOUTS)))
                _LAYOUTS[layout.file_size] = layout
                buffer = layout.read_regions(fp)
            arrays = layout.read_arrays(path, fp, buffer, mmap)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as err:
        if isinstance(err, CacheError):
            raise
        raise CacheError(f"{path}: not a readable .npz file ({str(err).splitlines()[0][:200]})") from None
    return _build(layout.recipe, arrays)


def clear_caches() -> None:
    """Forgets the parsed layouts, `.npy` headers, pickles and shapes: the next read is as cold as a new process's."""
    _LAYOUTS.clear()
    _unpickle.cache_clear()
    _parse_header.cache_clear()
    shape_of.cache_clear()


def _parse_layout(path: Path, fp: BinaryIO, directory: Directory) -> _Layout:
    """Parses a plain archive in full: every header and pickle, and where each array's data lies."""
    reader = _ReadAhead(fp, directory.file_size, directory.tail, directory.tail_start)
    structural = [(directory.directory_offset, directory.file_size)]  # central directory and end record
    unchecked = [(e.record_offset + TIMESTAMP_AND_CRC[0], e.record_offset + TIMESTAMP_AND_CRC[1])
                 for e in directory.entries]
    members, spots, tiny = {}, [], []
    for entry in sorted(directory.entries, key=lambda e: e.header_offset):
        local = reader.read(entry.header_offset, _LOCAL_HEADER.size)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(local) if len(local) == 30 else (b'', 0, 0)
        if signature != b'PK\x03\x04':
            raise CacheError(f"{path}: corrupt zip entry {entry.filename!r}")
        start = entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        raw = reader.read(start, min(entry.file_size, _HEAD_READ))
        shape, fortran, dtype, header_length = _npy_header(path, entry.filename, raw, entry.file_size)
        data, size = start + header_length, entry.file_size - header_length
        structural.append((entry.header_offset, data))
        unchecked.append((entry.header_offset + _LOCAL_TIMESTAMP_AND_CRC[0], entry.header_offset + _LOCAL_TIMESTAMP_AND_CRC[1]))
        if entry.filename in _META_MEMBERS:
            structural.append((data, data + size))
            members[entry.filename] = reader.read(data, size) if dtype.hasobject else \
                _array_from(path, entry.filename, reader.read(data, size), shape, fortran, dtype)
        elif dtype.hasobject:
            raise CacheError(f"{path}: array member {entry.filename!r} holds Python objects, expected numbers")
        else:
            spots.append(_Spot(entry.filename[:-4], data, size, dtype, shape, 'F' if fortran else 'C', None))
            if size <= _HEAD_READ:
                tiny.append((data, data + size))
    tree, specs, paths = _meta(path, members)
    recipe = _recipe(path, tree, 'root', specs, {spot.name: spot.shape for spot in spots})
    regions = _merge(structural + tiny)
    starts = np.array([start for start, _ in regions])
    bases = np.cumsum([0] + [end - start for start, end in regions])
    total = int(bases[-1])

    def to_buffer(ranges: list[tuple[int, int]]) -> np.ndarray:
        """File byte ranges `(n, 2)` -> the same ranges in the concatenated region buffer."""
        ranges = np.array(ranges, np.int64).reshape(-1, 2)
        region = np.searchsorted(starts, ranges[:, 0], 'right') - 1
        return ranges - starts[region, None] + bases[region, None]

    mask = _covered(total, to_buffer(structural)) & ~_covered(total, to_buffer(unchecked))
    in_buffer = dict(zip(tiny, to_buffer(tiny)[:, 0].tolist()))
    spots = tuple(spot._replace(in_buffer=in_buffer.get((spot.offset, spot.offset + spot.size))) for spot in spots)
    check_index = np.flatnonzero(mask)
    layout = _Layout(directory.file_size, tuple(regions), check_index, np.empty(0, np.uint8), spots, recipe)
    check_bytes = np.frombuffer(layout.read_regions(fp), np.uint8)[check_index].copy()
    return _Layout(directory.file_size, tuple(regions), check_index, check_bytes, spots, recipe)


def _covered(size: int, ranges: np.ndarray) -> np.ndarray:
    """Boolean mask of `size` bytes, True inside any of the `(n, 2)` half-open `ranges`."""
    edges = np.zeros(size + 1, np.int32)
    np.add.at(edges, ranges[:, 0], 1)
    np.add.at(edges, ranges[:, 1], -1)
    return np.cumsum(edges[:-1]) > 0


def _read_with_zipfile(path: Path, fp: BinaryIO) -> Any:
    """Any other zip layout (compressed members, ZIP64, comments): every member inflated by `zipfile` and parsed."""
    with zipfile.ZipFile(fp) as zf:
        raw = {info.filename: zf.read(info) for info in zf.infolist()}
    members, arrays = {}, {}
    for name, content in raw.items():
        shape, fortran, dtype, header_length = _npy_header(path, name, content, len(content))
        if dtype.hasobject and name not in _META_MEMBERS:
            raise CacheError(f"{path}: array member {name!r} holds Python objects, expected numbers")
        value = content[header_length:] if dtype.hasobject else \
            _array_from(path, name, content[header_length:], shape, fortran, dtype)
        if name in _META_MEMBERS:
            members[name] = value
        else:
            arrays[name[:-4]] = value
    tree, specs, paths = _meta(path, members)
    return _build(_recipe(path, tree, 'root', specs, {name: a.shape for name, a in arrays.items()}), arrays)


def _meta(path: Path, members: dict[str, Any]) -> tuple[Any, dict[str, Any], list]:
    """The saved tree, the spec of each tensor path, and the paths, from the raw `tree`/`specs` pickles and `paths`."""
    for required in _META_MEMBERS:
        if required not in members:
            raise CacheError(f"{path}: not a phiml.math.save file (member {required!r} missing)")
    tree, specs = (_unpickle_member(path, name, members[name]) for name in ('tree.npy', 'specs.npy'))
    paths = members['paths.npy']
    if not isinstance(paths, np.ndarray) or paths.dtype.kind != 'U':
        raise CacheError(f"{path}: member 'paths.npy' is not an array of strings")
    paths = paths.tolist()
    if not isinstance(tree, dict) or 'tree' not in tree:
        raise CacheError(f"{path}: member 'tree' is {type(tree).__name__}, expected {{'tree': ...}}")
    tree = tree['tree']
    _check_plain(path, tree, 'tree')  # each spec is checked where a tensor uses it
    if not isinstance(specs, list) or not isinstance(paths, list) or len(specs) != len(paths):
        raise CacheError(f"{path}: {len(specs)} specs for {len(paths)} paths (expected one spec per path)")
    return tree, dict(zip(paths, specs)), paths


def _unpickle_member(path: Path, name: str, data: bytes) -> Any:
    if not isinstance(data, bytes):
        raise CacheError(f"{path}: member {name!r} holds numbers, expected a pickled object array")
    try:
        return _unpickle(data)
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, ValueError, IndexError) as err:
        raise CacheError(f"{path}: refused to unpickle member {name!r}: {err}; a cache may hold only tensors "
                         f"and plain containers (dict, list, str, numbers)") from None


@functools.lru_cache(maxsize=64)
def _unpickle(data: bytes) -> Any:
    """The object array pickled in `data`, as nested lists, through the restricted unpickler.

    Cached by content (the sims of one cache share their `tree` and `specs`); callers never mutate the result."""
    array = _RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise ValueError(f"the pickle holds a {type(array).__name__}, expected an object array")
    return array.tolist()


def _npy_header(path: Path, name: str, raw: bytes, size: int) -> tuple[tuple, bool, np.dtype, int]:
    """`(shape, fortran_order, dtype, header length)` of the `.npy` member of `size` bytes that starts with `raw`."""
    if raw[:6] != _NPY_MAGIC or len(raw) < 10:
        raise CacheError(f"{path}: member {name!r} is not a .npy array")
    major = raw[6]
    if major == 1:
        start, length = 10, int.from_bytes(raw[8:10], 'little')
    elif major in (2, 3):
        start, length = 12, int.from_bytes(raw[8:12], 'little')
    else:
        raise CacheError(f"{path}: member {name!r} has .npy format version {major}, expected 1, 2 or 3")
    if start + length > len(raw):
        raise CacheError(f"{path}: member {name!r} has a {length}-byte .npy header, longer than the member or than "
                         f"the {_HEAD_READ} bytes this reader accepts (phiml.math.save writes ~128)")
    parsed = _parse_header(raw[start:start + length])
    if parsed is None:  # an unusual spelling (e.g. structured dtypes): numpy's parser (ast.literal_eval, no code)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        parsed = reader(io.BytesIO(raw[8:start + length]))
    elif isinstance(parsed, str):
        raise CacheError(f"{path}: member {name!r} has dtype {parsed!r}, not a numpy dtype")
    shape, fortran, dtype = parsed
    if not dtype.hasobject and start + length + math.prod(shape) * dtype.itemsize != size:
        raise CacheError(f"{path}: member {name!r} is {size} bytes, its header announces "
                         f"{start + length + math.prod(shape) * dtype.itemsize} (truncated or corrupt)")
    return shape, fortran, dtype, start + length


@functools.lru_cache(maxsize=512)
def _parse_header(header: bytes) -> tuple[tuple, bool, np.dtype] | str | None:
    """`(shape, fortran_order, dtype)` of a `.npy` header in numpy's usual spelling; the descr string if it names no
    dtype; None for any other spelling. Cached: the members of a cache share a handful of distinct headers."""
    match = _NPY_HEADER.fullmatch(header.decode('latin1').rstrip())
    if not match:
        return None
    try:
        dtype = np.dtype(match[1])
    except TypeError:
        return match[1]
    return tuple(int(size) for size in match[3].replace(' ', '').split(',') if size), match[2] == 'True', dtype


def _array_from(path: Path, name: str, data: bytes, shape: tuple, fortran: bool, dtype: np.dtype) -> np.ndarray:
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise CacheError(f"{path}: member {name!r} ends early (truncated file)")
    flat = np.frombuffer(data, dtype, count) if count else np.empty(0, dtype)
    return flat.reshape(shape, order='F' if fortran else 'C').copy()


def _mapped(fp: BinaryIO, offset: int, size: int, dtype: np.dtype, count: int) -> np.ndarray:
    """A read-only flat array over `size` bytes of the open file at `offset`; the mapping lives as long as the array.

    (`np.memmap` reopens the file by name and costs ~5x more.)
    """
    start = offset - offset % mmap_module.ALLOCATIONGRANULARITY
    mapping = mmap_module.mmap(fp.fileno(), offset - start + size, access=mmap_module.ACCESS_READ, offset=start)
    return np.frombuffer(mapping, dtype, count, offset - start)


class _ReadAhead:
    """Reads a file at given offsets `_HEAD_READ` bytes at a time, serving requests from the last read when they fall
    inside it (used only while parsing a layout).

    Args:
        fp: The open file.
        file_size: Its size in bytes.
        buffer: Bytes already read, starting at offset `start`.
    """

    def __init__(self, fp: BinaryIO, file_size: int, buffer: bytes = b'', start: int = 0):
        self.fp, self.file_size, self.buffer, self.start = fp, file_size, buffer, start

    def read(self, offset: int, need: int) -> bytes:
        """`need` bytes from `offset`, fewer only at the end of the file."""
        need = max(0, min(need, self.file_size - offset))
        if not (self.start <= offset and offset + need <= self.start + len(self.buffer)):
            self.fp.seek(offset)
            self.start, self.buffer = offset, self.fp.read(max(need, _HEAD_READ))
        begin = offset - self.start
        return self.buffer[begin:begin + need]


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching byte ranges joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _check_plain(path: Path, obj: Any, where: str) -> None:
    """Refuses anything but plain containers and values (exact types: the unpickler could build no subclass anyway)."""
    pending = [obj]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind not in _PLAIN:
            raise CacheError(f"{path}: {where} holds a {kind.__name__}, expected only plain containers and values")
        if kind is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)


def _recipe(path: Path, node: Any, p: str, specs: dict[str, Any], shapes: dict[str, tuple]) -> Any:
    """The tree with each tensor replaced by a `_TensorLeaf` (its shape checked against its array) and each plain
    array by a `_NativeLeaf`."""
    if node is None:
        if p not in specs or f'{p}:0' not in shapes:
            raise CacheError(f"{path}: no array stored for tensor {p!r}")
        return _TensorLeaf(f'{p}:0', _spec_shape(path, p, specs[p], shapes[f'{p}:0']))
    if node == '__native__':
        if f'{p}:0' not in shapes:
            raise CacheError(f"{path}: no array stored for {p!r}")
        return _NativeLeaf(f'{p}:0')
    if isinstance(node, dict):
        return {k: _recipe(path, v, f'{p}[{k}]', specs, shapes) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        items = [_recipe(path, v, f'{p}[{i}]', specs, shapes) for i, v in enumerate(node)]
        return tuple(items) if isinstance(node, tuple) else items
    return node


def _spec_shape(path: Path, p: str, spec: Any, sizes: tuple) -> Shape:
    _check_plain(path, spec, 'specs')
    try:
        if spec['type'] != 'dense':
            raise CacheError(f"{path}: tensor {p!r} is stored as {spec['type']!r}, only dense tensors are supported")
        shape_spec = spec['shape']
        by_name = {name: (name, kind, tuple(items) if items else size) for name, kind, items, size in
                   zip(shape_spec['names'], shape_spec['types'], shape_spec['item_names'], shape_spec['sizes'])}
        shape = shape_of(tuple(by_name[n] for n in spec['names']))
    except (KeyError, TypeError, ValueError, AssertionError) as err:
        raise CacheError(f"{path}: tensor {p!r} does not match its spec ({type(err).__name__}: {err})") from None
    if shape.sizes != tuple(sizes):
        raise CacheError(f"{path}: tensor {p!r} does not match its spec (array of sizes {tuple(sizes)}, "
                         f"spec {shape})")
    return shape


def _build(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    kind = type(node)
    if kind is _TensorLeaf:
        return dense(arrays[node.name], node.shape, NUMPY)
    if kind is _NativeLeaf:
        value = arrays[node.name]  # as stored: wrapping it in a Tensor could cast it to the default precision
        return value.item() if value.shape == () else value
    if kind is dict:
        return {k: _build(v, arrays) for k, v in node.items()}
    if kind is list:
        return [_build(v, arrays) for v in node]
    if kind is tuple:
        return tuple(_build(v, arrays) for v in node)
    return node
