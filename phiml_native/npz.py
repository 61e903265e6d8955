"""Reading `phiml.math.save` files as `phiml.math.load` does, without running code the file carries.

`phiml.math.load` is `np.load(allow_pickle=True)` plus phiml's reassembly, so a crafted file executes code. This
reader returns what `phiml.math.load` returns for every file it accepts (values, dims, dim types, item names, dtypes,
which dims are stored, metadata and its types) and refuses anything else with a `CacheError` naming the file and
member. The zip directory comes from `zipfile`, `.npy` headers from `numpy.lib.format`, the pickled `tree` and
`specs` from a restricted unpickler (`pickles`). As in `phiml.math.load`, the members other than `tree`, `specs` and
`paths` are handed to the tensors by position. A small file is read whole; in a larger one each stored member takes
one read of its first bytes, and a large array one `readinto` more, or is memory-mapped. Parsed headers and meta
members are cached by content: the sims of a cache share them. Not checked: the zip CRCs of stored members (a mapped
one cannot be; the cache manifest holds SHA-256 digests of whole files).
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
from phiml.math._tensors import assemble_tensors, unserialize_spec  # phiml's own reassembly, as load runs it
from phiml.math._tree import all_attributes, assemble_tree, attr_paths_from_container

from harness.errors import CacheError
from .pickles import unpickle_object_array

META = ('tree', 'specs', 'paths')
WHOLE = 2 ** 20  # files up to this size are read whole (unless mapped) and parsed from memory
HEAD = 4096  # bytes read first from a stored member: its local and .npy headers, all of a small member
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
        with open(path, 'rb') as fp:
            if not mmap and os.fstat(fp.fileno()).st_size <= WHOLE:  # one read; members parsed from memory
                fp = io.BytesIO(fp.read())
            members = _read_members(fp, mmap, out or {})
        return _assemble(members)
    except _Refused as err:
        raise CacheError(f"{path}: {err}") from None
    except (OSError, EOFError, ValueError, struct.error, zipfile.BadZipFile, NotImplementedError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CacheError(f"{path}: not a readable .npz file ({reason})") from None


def clear_caches() -> None:
    """Forgets parsed headers, pickles and recipes: the next read is as cold as a new process's."""
    _npy_header.cache_clear()
    unpickle_object_array.cache_clear()
    _structure.cache_clear()


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
    fp.seek(0)
    if fp.read(4) != zipfile.stringFileHeader:  # np.load would not take it for a zip, and would unpickle it
        raise _Refused("not a zip archive from its first byte (np.load would unpickle it)")
    return {key: _member(archive, fp, info, key, mmap, out.get(key)) for info, key in zip(infos, keys)}


def _member(archive: zipfile.ZipFile, fp, info: zipfile.ZipInfo, key: str, mmap: bool, target: np.ndarray | None
            ) -> Any:
    """One member: a compressed one inflated by `zipfile` (CRC checked); a stored one from one read of its first
    `HEAD` bytes (headers, and all of a small member), a large one's data with one `readinto` (into `target` where it
    fits) or memory-mapped."""
    name, size = info.filename, info.file_size
    if info.compress_type != zipfile.ZIP_STORED:
        content, start = archive.read(info), None
    else:
        fp.seek(info.header_offset)
        head = fp.read(HEAD)
        local = _LOCAL.unpack_from(head)
        skip = _LOCAL.size + local[10] + local[11]
        if local[0] != zipfile.stringFileHeader or info.flag_bits & 0x1 or \
                head[_LOCAL.size:_LOCAL.size + local[10]] != info.orig_filename.encode('utf-8' if info.flag_bits & 0x800 else 'cp437'):
            raise _Refused(f"member {name!r}: its local header does not match the zip directory (or it is encrypted)")
        content, start = head[skip:skip + size], info.header_offset + skip
    complete = len(content) == size  # else `content` is the member's first bytes; the rest is read from `start` on
    if content[:6] != npy_format.MAGIC_PREFIX:  # not an .npy: np.load gives its bytes
        return content if complete else _read(fp, start, size)
    length = 10 + int.from_bytes(content[8:10], 'little') if content[6] == 1 else \
        12 + int.from_bytes(content[8:12], 'little')
    shape, fortran, dtype = _npy_header(content[:length] if len(content) >= length else _read(fp, start, length))
    data_size = size - length
    if dtype.hasobject:
        if key not in META:
            raise _Refused(f"array member {name!r} holds Python objects, expected numbers")
        return _Pickled(content[length:] if complete else _read(fp, start + length, data_size))
    count = math.prod(shape)
    if count * dtype.itemsize != data_size:
        raise _Refused(f"member {name!r} holds {data_size} bytes of data, its header announces "
                       f"{count * dtype.itemsize} (truncated or corrupt)")
    if complete or not dtype.itemsize:
        flat = np.frombuffer(content, dtype, count, length).copy() if count and dtype.itemsize else np.empty(count, dtype)
    elif mmap:
        flat = _mapped(fp, start + length, data_size, dtype, count)
    else:
        fits = target is not None and target.shape == shape and target.dtype == dtype and not fortran \
            and target.flags.c_contiguous and target.flags.writeable
        flat = target.reshape(-1) if fits else np.empty(count, dtype)
        if _read_into(fp, start + length, memoryview(flat).cast('B')) != data_size:
            raise EOFError(f"member {name!r} ends early (truncated file)")
        if fits:
            return target
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _read(fp, offset: int, size: int) -> bytes:
    fp.seek(offset)
    data = fp.read(size)
    if len(data) != size:
        raise EOFError(f"the file ends {size - len(data)} bytes early")
    return data


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
    """Reads from `offset` into `view` (a buffered file's `readinto` fills it unless the file ends first)."""
    fp.seek(offset)
    return fp.readinto(view)


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


@functools.lru_cache(maxsize=64)
def _structure(tree_key, specs_key, paths_key) -> tuple[Any, list, list, list[int]]:
    """`(tree, specs, paths, order)` as `phiml.math.load` derives them from the meta members: the tree with `None`
    where a tensor goes, the unserialized specs (one per stored tensor), the stored paths, and which stored tensor
    each of the tree's tensor leaves takes (callers must not mutate the cached result)."""
    tree, specs, paths = (_meta_value(name, key) for name, key in zip(META, (tree_key, specs_key, paths_key)))
    if not isinstance(tree, dict) or 'tree' not in tree:
        raise _Refused(f"member 'tree' holds a {type(tree).__name__}, expected {{'tree': ...}}")
    if not isinstance(specs, list) or not all(isinstance(spec, dict) for spec in specs):
        raise _Refused("member 'specs' is not a list of dicts")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise _Refused("member 'paths' is not a list of strings")
    try:
        specs = [unserialize_spec(spec) for spec in specs]
        new_paths = attr_paths_from_container(tree['tree'], all_attributes, 'root')
    except Exception as err:  # noqa: BLE001 - phiml's parsing of plain but malformed specs
        raise _Refused(f"malformed tensor specs or tree ({type(err).__name__}: {err})") from None
    order = list(range(len(specs)))
    if tuple(paths) != tuple(new_paths):  # stored in another order: looked up by path, as phiml.math.load does
        lookup = dict(zip(paths, order))
        if any(p not in lookup for p in new_paths):
            raise _Refused(f"tensor paths {new_paths} of the tree are not all among the stored {paths}")
        order = [lookup[p] for p in new_paths]
    return tree['tree'], specs, paths, order


def _assemble(members: dict[str, Any]) -> Any:
    """The tree, assembled by phiml's own `assemble_tensors` and `assemble_tree` as `phiml.math.load` runs them:
    the members other than the meta members are handed to the tensors by position, in archive order."""
    tree, specs, paths, order = _structure(*(_content_key(name, members[name]) for name in META))
    keys = [key for key in members if key not in META]
    natives = [members[key] for key in keys]
    if len(natives) < len(specs):
        raise _Refused(f"{len(specs)} tensors but only {len(natives)} array members")
    for key, label, native in zip(keys, paths, natives):  # each spec takes at least the next member
        if not isinstance(native, np.ndarray):
            raise _Refused(f"member {key!r} would become (part of) tensor {label!r}, but is not an .npy array")
    try:
        tensors = assemble_tensors(natives, specs)
        return assemble_tree(tree, [tensors[i] for i in order], attr_type=all_attributes)
    except Exception as err:  # noqa: BLE001 - phiml's own errors on a malformed file
        raise _Refused(f"its members do not assemble into a tree ({type(err).__name__}: {err})") from None
