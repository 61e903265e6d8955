"""Reading `phiml.math.save` files as `phiml.math.load` does, without running code the file carries.

`phiml.math.load` is `np.load(allow_pickle=True)` plus phiml's reassembly, so a crafted file executes code. This
reader returns what `phiml.math.load` returns for every file it accepts (values, dims, dim types, item names, dtypes,
which dims are stored, metadata and its types) and refuses anything else with a `CacheError` naming the file and
member. The zip directory comes from `zipfile`, `.npy` headers from `numpy.lib.format`, the pickled `tree` and
`specs` from a restricted unpickler (`pickles`). As in `phiml.math.load`, the members other than `tree`, `specs` and
`paths` are handed to the tensors by position. The first bytes of every member are read together with their
neighbours' (small members need no read of their own); each large array takes one `readinto`, or is memory-mapped.
Headers, pickles and the recipe that turns members into the tree are cached by content: the sims of a cache share them.
Not checked: the zip CRCs of stored array data (a mapped member cannot be; the cache manifest holds SHA-256 digests).
"""
from __future__ import annotations

import functools
import io
import math
import mmap as mmap_module
import os
import struct
import zipfile
from typing import Any, Mapping, NamedTuple

import numpy as np
from numpy.lib import format as npy_format
from phiml.backend import NUMPY
from phiml.math import EMPTY_SHAPE, Shape
from phiml.math._tensors import Dense, assemble_tensors, unserialize_spec  # phiml's own reassembly, as load runs it
from phiml.math._tree import all_attributes, assemble_tree, attr_paths_from_container

from harness.errors import CacheError
from .pickles import unpickle_object_array

META = ('tree', 'specs', 'paths')
REGION = 4096  # the first bytes of each member read with its neighbours': local and .npy headers, small members
_LOCAL = struct.Struct(zipfile.structFileHeader)  # zip local file header: name and extra lengths are fields 10, 11


class _Pickled(NamedTuple):
    data: bytes


def read_phiml_npz(path: str | os.PathLike, mmap: bool = False, out: Mapping[str, np.ndarray] | None = None) -> Any:
    """Reads a `phiml.math.save` file into the structure it was saved from (tensors backed by numpy).

    Args:
        path: `.npz` file.
        mmap: Memory-map the large stored arrays (read-only views into the file) instead of reading them.
        out: Arrays to read large members into, by member name without `.npy` (e.g. `'root[velocity]:0'`); used
            where shape and dtype fit (C order, writable); the returned tensor is then backed by it.

    Raises:
        CacheError: the file is missing, not a zip, not in phiml's format, or carries anything but plain data.
    """
    try:
        with open(path, 'rb', buffering=0) as fp:  # unbuffered: each read is one exact system call
            members = _read_members(fp, mmap, out or {})
        keys = tuple(name for name in members if name not in META)
        return _recipe(*(_content_key(name, members[name]) for name in META), keys).build(members)
    except _Refused as err:
        raise CacheError(f"{path}: {err}") from None
    except (OSError, EOFError, ValueError, struct.error, zipfile.BadZipFile, NotImplementedError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CacheError(f"{path}: not a readable .npz file ({reason})") from None


def clear_caches() -> None:
    """Forgets parsed headers, pickles and recipes: the next read is as cold as a new process's."""
    _npy_header.cache_clear()
    unpickle_object_array.cache_clear()
    _recipe.cache_clear()


class _Refused(Exception):
    """A file this reader refuses; the message says why (the caller adds the path)."""


def _read_members(fp, mmap: bool, out: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Every member as `np.load` keys it (`.npy` stripped), in archive order: an array, `_Pickled` bytes for an
    object array (only `tree`, `specs`, `paths` may be one), or the raw bytes of a member that is not an `.npy`."""
    archive = zipfile.ZipFile(fp)
    infos = archive.infolist()
    keys = [info.filename[:-4] if info.filename.endswith('.npy') else info.filename for info in infos]
    if len(set(keys)) != len(keys):
        raise _Refused(f"member names {keys} repeat (after dropping '.npy')")
    for name in META:
        if name not in keys:
            raise _Refused(f"not a phiml.math.save file (member {name!r} missing)")
    key_of = {id(info): key for info, key in zip(infos, keys)}
    by_offset = sorted(infos, key=lambda info: info.header_offset)
    if by_offset[0].header_offset != 0:  # np.load would not see a zip, and would unpickle the file
        raise _Refused("not a zip archive from its first byte (np.load would unpickle it)")
    ends = [info.header_offset for info in by_offset[1:]] + [archive.start_dir]
    regions = _Regions(fp, [(info.header_offset, min(end, info.header_offset + REGION))
                            for info, end in zip(by_offset, ends)])
    members = {key_of[id(info)]: _member(archive, regions, info, end, key_of[id(info)], mmap, out)
               for info, end in zip(by_offset, ends)}
    return {key: members[key] for key in keys}


class _Regions:
    """Byte ranges of a file, read with one read per run of adjacent ranges."""

    def __init__(self, fp, ranges: list[tuple[int, int]]):
        self.fp, self.chunks = fp, []
        for start, end in ranges:
            if self.chunks and self.chunks[-1][1] == start:
                self.chunks[-1][1] = end
            else:
                self.chunks.append([start, end])
        for chunk in self.chunks:
            fp.seek(chunk[0])
            chunk.append(fp.read(chunk[1] - chunk[0]))
            chunk[1] = chunk[0] + len(chunk[2])

    def at(self, offset: int, size: int) -> tuple[bytes, int]:
        """A buffer holding the `size` bytes from `offset`, and where they start in it (a region, else a read).

        Raises:
            EOFError: the file ends first."""
        for start, end, data in self.chunks:
            if start <= offset and offset + size <= end:
                return data, offset - start
        self.fp.seek(offset)
        data = self.fp.read(size)
        if len(data) != size:
            raise EOFError(f"the file ends {size - len(data)} bytes early")
        return data, 0

    def get(self, offset: int, size: int) -> bytes:
        data, at = self.at(offset, size)
        return data[at:at + size]


def _member(archive: zipfile.ZipFile, regions: _Regions, info: zipfile.ZipInfo, end: int, key: str, mmap: bool,
            out: Mapping[str, np.ndarray]) -> Any:
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:  # inflated by zipfile (CRC checked), then parsed from memory
        content = archive.read(info)
        regions, start, size, mmap = _Regions(io.BytesIO(content), [(0, len(content))]), 0, len(content), False
    else:
        data, at = regions.at(info.header_offset, _LOCAL.size)
        local = _LOCAL.unpack_from(data, at)
        start = info.header_offset + _LOCAL.size + local[10] + local[11]
        if local[0] != zipfile.stringFileHeader or regions.get(start - local[10] - local[11], local[10]) != \
                _encoded(info.orig_filename, info.flag_bits & 0x800):
            raise _Refused(f"member {name!r}: its local header does not match the zip directory")
        if info.flag_bits & 0x1 or start + info.compress_size > end:
            raise _Refused(f"member {name!r} is encrypted, or overlaps the next one (corrupt archive)")
        size = info.file_size
    data, at = regions.at(start, min(size, 12))
    if data[at:at + 6] != npy_format.MAGIC_PREFIX:
        return regions.get(start, size)  # not an .npy: np.load gives its bytes
    version = data[at + 6]
    length = 10 + int.from_bytes(data[at + 8:at + 10], 'little') if version == 1 else \
        12 + int.from_bytes(data[at + 8:at + 12], 'little')
    shape, fortran, dtype = _npy_header(regions.get(start, length))
    data_start, data_size = start + length, size - length
    if dtype.hasobject:
        if key not in META:
            raise _Refused(f"array member {name!r} holds Python objects, expected numbers")
        return _Pickled(regions.get(data_start, data_size))
    count = math.prod(shape)
    if count * dtype.itemsize != data_size:
        raise _Refused(f"member {name!r} holds {data_size} bytes of data, its header announces "
                       f"{count * dtype.itemsize} (truncated or corrupt)")
    if data_size <= REGION or not dtype.itemsize:
        data, at = regions.at(data_start, data_size)
        flat = np.frombuffer(data, dtype, count, at).copy() if count else np.empty(0, dtype)
    elif mmap:
        flat = _mapped(regions.fp, data_start, data_size, dtype, count)
    else:
        target = out.get(key)
        fits = target is not None and target.shape == shape and target.dtype == dtype and not fortran \
            and target.flags.c_contiguous and target.flags.writeable
        flat = target.reshape(-1) if fits else np.empty(count, dtype)
        if _read_into(regions.fp, data_start, memoryview(flat).cast('B')) != data_size:
            raise EOFError(f"member {name!r} ends early (truncated file)")
        if fits:
            return target
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


@functools.lru_cache(maxsize=1024)
def _encoded(name: str, utf8: int) -> bytes:
    return name.encode('utf-8' if utf8 else 'cp437')


@functools.lru_cache(maxsize=256)
def _npy_header(raw: bytes) -> tuple[tuple, bool, np.dtype]:
    """`(shape, fortran_order, dtype)` of a `.npy` header, parsed by numpy (versions 1.0 and 2.0)."""
    fp = io.BytesIO(raw)
    version = npy_format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    return read(fp, max_header_size=len(raw) + 1)


def _read_into(fp, offset: int, view: memoryview) -> int:
    """Reads from `offset` until `view` is full or the file ends (one `readinto` unless the OS returns less)."""
    fp.seek(offset)
    done = 0
    while done < len(view):
        count = fp.readinto(view[done:])
        if not count:
            break
        done += count
    return done


def _mapped(fp, offset: int, size: int, dtype: np.dtype, count: int) -> np.ndarray:
    """A read-only flat array over `size` bytes of the open file at `offset`; the mapping lives as long as the array."""
    if offset + size > os.fstat(fp.fileno()).st_size:
        raise EOFError(f"array data at {offset}..{offset + size} lies beyond the end of the file")
    start = offset - offset % mmap_module.ALLOCATIONGRANULARITY
    mapping = mmap_module.mmap(fp.fileno(), offset - start + size, access=mmap_module.ACCESS_READ, offset=start)
    return np.frombuffer(mapping, dtype, count, offset - start)


def _content_key(name: str, value: Any) -> Any:
    """A hashable stand-in for a meta member's content (the recipe cache is keyed by it)."""
    if isinstance(value, _Pickled):
        return value
    if isinstance(value, np.ndarray):
        return value.dtype.str, value.shape, value.tobytes()
    raise _Refused(f"member {name!r} is not an .npy array")


def _meta_value(name: str, key: Any) -> Any:
    """`data[name].tolist()` as `phiml.math.load` takes it, from `_content_key`."""
    if isinstance(key, _Pickled):
        try:
            return unpickle_object_array(key.data)
        except ValueError as err:
            raise _Refused(f"refused to unpickle member '{name}.npy': {err}; a cache may hold only tensors and plain "
                           f"containers (dict, list, str, numbers)") from None
    dtype, shape, data = key
    return np.frombuffer(data, dtype).reshape(shape).tolist()


_CONST, _TENSOR, _NATIVE, _DICT, _LIST, _TUPLE = range(6)  # kinds of recipe nodes `(kind, payload)`


class _Recipe(NamedTuple):
    """How the members of one kind of file become its tree.

    Dense spec `i` takes the `i`-th non-meta member `natives[i]`, which must hold an array of `sizes[i]`;
    `tensors[i]` = `(names, shape)`; `root` is the tree as recipe nodes. `fallback` = `(tree, specs, order)` where
    phiml's own reassembly runs instead, on all non-meta members (specs other than dense, layouts)."""
    natives: tuple[str, ...]
    labels: tuple[str, ...]
    sizes: tuple
    tensors: tuple
    root: Any
    fallback: tuple | None

    def build(self, members: dict[str, Any]) -> Any:
        arrays = [members[key] for key in self.natives]
        if self.fallback is None:
            for key, label, array, sizes in zip(self.natives, self.labels, arrays, self.sizes):
                if not isinstance(array, np.ndarray) or array.shape != sizes:
                    found = f"sizes {array.shape}" if isinstance(array, np.ndarray) else "bytes, not an .npy array"
                    raise _Refused(f"member {key!r} would become tensor {label!r} of sizes {sizes}, but holds {found}")
            return _build(self.root, arrays, self.tensors)
        tree, specs, order = self.fallback
        try:
            tensors = assemble_tensors(arrays, specs)
            return assemble_tree(tree, [tensors[i] for i in order], attr_type=all_attributes)
        except Exception as err:  # noqa: BLE001 - phiml's own errors on a malformed file
            raise _Refused(f"its members do not assemble into a tree ({type(err).__name__}: {err})") from None


def _build(node, arrays: list, tensors: tuple) -> Any:
    kind, payload = node
    if kind == _CONST:
        return payload
    if kind == _TENSOR:
        names, shape = tensors[payload]
        return Dense(arrays[payload], names if type(names) is tuple else list(names), shape, NUMPY)
    if kind == _NATIVE:
        array = arrays[payload]
        return array.item() if tensors[payload][1] == EMPTY_SHAPE else array
    if kind == _DICT:
        return {key: _build(value, arrays, tensors) for key, value in payload}
    items = [_build(value, arrays, tensors) for value in payload]
    return items if kind == _LIST else tuple(items)


@functools.lru_cache(maxsize=64)
def _recipe(tree_key, specs_key, paths_key, natives: tuple[str, ...]) -> _Recipe:
    """The recipe of files with these meta members and non-meta member names, in archive order."""
    tree, specs, paths = (_meta_value(name, key) for name, key in zip(META, (tree_key, specs_key, paths_key)))
    if not isinstance(tree, dict) or 'tree' not in tree:
        raise _Refused(f"member 'tree' holds a {type(tree).__name__}, expected {{'tree': ...}}")
    tree = tree['tree']
    if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
        raise _Refused("member 'specs' is not a list of dicts")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise _Refused("member 'paths' is not a list of strings")
    try:
        specs = [unserialize_spec(spec) for spec in specs]
        new_paths = attr_paths_from_container(tree, all_attributes, 'root')
    except Exception as err:  # noqa: BLE001 - phiml's parsing of plain but malformed specs
        raise _Refused(f"malformed tensor specs or tree ({type(err).__name__}: {err})") from None
    order = list(range(len(specs)))
    if tuple(paths) != tuple(new_paths):  # stored in another order: looked up by path, as phiml.math.load does
        lookup = dict(zip(paths, order))
        if any(p not in lookup for p in new_paths):
            raise _Refused(f"tensor paths {new_paths} of the tree are not all among the stored {paths}")
        order = [lookup[p] for p in new_paths]
    labels = tuple(paths[i] if i < len(paths) else f'spec {i}' for i in range(len(specs)))
    dense = all(spec.get('type') is Dense and isinstance(spec.get('shape'), Shape) and isinstance(spec.get('names'), (tuple, list))
                and all(n in spec['shape'] for n in spec['names']) for spec in specs)
    if dense and len(specs) > len(natives):
        raise _Refused(f"{len(specs)} tensors but only {len(natives)} array members")
    if dense:
        try:
            root = _compile(tree, list(order))
            tensors = tuple((spec['names'], spec['shape']) for spec in specs)
            sizes = tuple(tuple(spec['shape'].get_size(n) for n in spec['names']) for spec in specs)
            return _Recipe(natives[:len(specs)], labels, sizes, tensors, root, None)
        except _NeedsPhiml:
            pass
        except IndexError:
            raise _Refused(f"the tree has more tensors than the {len(specs)} stored") from None
    return _Recipe(natives, labels, (), (), None, (tree, specs, order))


class _NeedsPhiml(Exception):
    """The tree holds a layout: phiml's own reassembly builds it."""


def _compile(obj, order: list[int]) -> tuple:
    """`assemble_tree`'s walk over a plain tree, recording which spec each tensor leaf takes."""
    if type(obj) is str:
        if obj == '__missing__':
            return _CONST, None
        return (_NATIVE, order.pop(0)) if obj == '__native__' else (_CONST, obj)
    if obj is None:
        return _TENSOR, order.pop(0)
    if type(obj) is list or type(obj) is tuple:
        return (_LIST if type(obj) is list else _TUPLE), tuple(_compile(item, order) for item in obj)
    if type(obj) is dict:
        if '__layout__' in obj:
            raise _NeedsPhiml()
        return _DICT, tuple((key, _compile(value, order)) for key, value in obj.items())
    return _CONST, obj
