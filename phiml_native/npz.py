"""Reading `phiml.math.save` files as `phiml.math.load` (`np.load(allow_pickle=True)` + phiml's reassembly) does,
without running code a crafted file carries: what `phiml.math.load` returns for every file accepted, a `CacheError`
naming file and member for anything else. The zip directory comes from `zipfile`, `.npy` headers from
`numpy.lib.format`, the pickled `tree` and `specs` from an unpickler that admits only numpy's array reconstruction and
plain values. A large array takes one `readinto` (into `out` where it fits) or is memory-mapped; the bytes around the
large arrays take one read per stretch.
A later file whose every byte outside its arrays' data and CRCs repeats one already parsed (the sims of a cache) is
read by that file's layout. Not checked: zip CRCs (the cache manifest holds SHA-256 digests of whole files)."""
from __future__ import annotations

import bisect
import contextlib
import functools
import io
import itertools
import math
import os
import pickle
import re
import struct
import tokenize
import zipfile
from typing import Any, Mapping, NamedTuple

import numpy as np
from numpy.lib import format as npy_format
from phiml.backend import choose_backend
from phiml.math._tensors import Dense, assemble_tensors, unserialize_spec  # phiml's own reassembly, as load runs it
from phiml.math._tree import MISSING_TENSOR, NATIVE_TENSOR, all_attributes, assemble_tree

from harness.errors import CacheError

META = ('tree', 'specs', 'paths')
WHOLE = 2 ** 16  # files up to this size are parsed from one read of the whole file (unless mapped)
HEAD = 4096  # arrays larger than this are read (or mapped) on their own; the first bytes read of a member when parsing
_LOCAL = struct.Struct(zipfile.structFileHeader)  # zip local file header: name and extra lengths are fields 10, 11
_NUMPY = choose_backend(np.zeros(0))

# A stored array member: where its data lies (`chunk` -1: a large array at `start` in the file; else `start` in chunk)
_Array = NamedTuple('_Array', [('name', str), ('chunk', int), ('start', int), ('nbytes', int), ('dtype', np.dtype),
                               ('shape', tuple), ('fortran', bool)])
# How a file is assembled (`plan`, see `_plan`), the stretches of the file around its large arrays (`chunks`: start,
# end), and their bytes outside small arrays' data and CRCs (`kept`: per chunk, as integers, the mask of those bytes and
# their values): a later file of the same size whose chunks hold these bytes is read alike.
_Layout = NamedTuple('_Layout', [('plan', tuple), ('chunks', tuple), ('kept', tuple)])
_LAYOUTS: dict[int, list[_Layout]] = {}  # file size -> the layouts parsed last


def read_phiml_npz(path: str | os.PathLike, mmap: bool = False, out: Mapping[str, np.ndarray] | None = None) -> Any:
    """Reads a `phiml.math.save` file into the structure it was saved from (tensors backed by numpy).

    Args:
        path: `.npz` file.
        mmap: Memory-map the large stored arrays (read-only views into the file) instead of reading them.
        out: Arrays to read large array members into, by member name without `.npy` (e.g. `'root[velocity]:0'`);
            used where shape and dtype fit (C order, writable); the returned tensor is then backed by it.

    Raises:
        CacheError: the file is missing, not a zip, not in phiml's format, or carries anything but plain data.
    """
    try:
        with open(path, 'rb', buffering=0) as fp:  # a read or readinto per stretch and large array: no buffer
            size = os.fstat(fp.fileno()).st_size
            for layout in _LAYOUTS.get(size, ()):
                chunks = [_read(fp, a, b - a) for a, b in layout.chunks]
                if all(int.from_bytes(chunk, 'little') & mask == kept for chunk, (mask, kept) in zip(chunks, layout.kept)):
                    break
            else:  # parsed from memory where the file is small: many small reads
                fp = io.BytesIO(_read(fp, 0, size)) if not mmap and size <= WHOLE else fp
                layout, chunks = _parse(fp, size)
            out, (members, *plan) = out or {}, layout.plan
            natives = [_array(fp, chunks, value, mmap, out.get(key)) if type(value) is _Array else value
                       for key, value in members]
        return _assemble(natives, *plan)
    except _Refused as err:
        raise CacheError(f"{path}: {err}") from None
    except (OSError, EOFError, ValueError, struct.error, zipfile.BadZipFile, NotImplementedError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CacheError(f"{path}: not a readable .npz file ({reason})") from None


def clear_caches() -> None:
    """Forgets parsed layouts (with their meta members) and headers: the next read is as cold as a new process's."""
    _LAYOUTS.clear()
    _npy_header.cache_clear()


class _Refused(Exception):
    """A file this reader refuses; the message says why (the caller adds the path)."""


def _parse(fp, size: int) -> tuple[_Layout, list[bytes]]:
    """The layout of a file (remembered for files of its size) and the bytes of its chunks."""
    archive, members = zipfile.ZipFile(fp), {}
    fp.seek(0)
    if fp.read(4) != zipfile.stringFileHeader:  # np.load would not take it for a zip, and would unpickle it
        raise _Refused("not a zip archive from its first byte (np.load would unpickle it)")
    for info in archive.infolist():
        key = info.filename.removesuffix('.npy')
        if key in members:
            raise _Refused(f"member name {key!r} repeats (after dropping '.npy')")
        members[key] = _member(archive, fp, info, key)
    arrays = [value for value in members.values() if isinstance(value, _Array)]
    edges = [0, *itertools.chain(*sorted((a.start, a.start + a.nbytes) for a in arrays if a.nbytes > HEAD)), size]
    spans = tuple(zip(edges[::2], edges[1::2]))
    starts = [a for a, _ in spans]
    for array in (a for a in arrays if a.nbytes <= HEAD):  # each small array lies in a chunk, large ones apart
        i = bisect.bisect_right(starts, array.start) - 1
        if array.start + array.nbytes > spans[i][1]:
            raise _Refused(f"member {array.name!r}: its data overlaps another member's")
        members[array.name.removesuffix('.npy')] = array._replace(chunk=i, start=array.start - starts[i])
    if any(a > b for a, b in spans):
        raise _Refused("the data of two large array members overlap")
    # not compared with a later file: small arrays' data, and every member's CRC (local header +14, directory +16)
    holes = [(a.start, a.start + a.nbytes) for a in arrays if a.nbytes <= HEAD] + [
        (offset, offset + 4) for info, entry in zip(archive.infolist(), directory_offsets(archive))
        for offset in (info.header_offset + 14, entry + 16)]
    chunks, masks = [_read(fp, a, b - a) for a, b in spans], [np.full(b - a, 255, np.uint8) for a, b in spans]
    for start, end in holes:  # (where past its chunk's end, in a large array's data: not compared anyway)
        i = bisect.bisect_right(starts, start) - 1
        masks[i][start - starts[i]:end - starts[i]] = 0
    masks = [int.from_bytes(mask, 'little') for mask in masks]
    layout = _Layout(_plan(members), spans, tuple((m, int.from_bytes(c, 'little') & m) for m, c in zip(masks, chunks)))
    _LAYOUTS[size] = [layout, *_LAYOUTS.get(size, [])[:3]]
    return layout, chunks


def _member(archive: zipfile.ZipFile, fp, info: zipfile.ZipInfo, key: str) -> Any:
    """One member as `np.load` keys it: `_Array` for a stored array, an array for a compressed one (inflated by
    `zipfile`, CRC checked), the bytes of a member that is not an `.npy`; a meta member's value."""
    name, size, start = info.filename, info.file_size, 0
    if info.compress_type != zipfile.ZIP_STORED:
        content = archive.read(info)
    else:
        fp.seek(info.header_offset)
        head = fp.read(HEAD)
        local = _LOCAL.unpack_from(head)
        if local[0] != zipfile.stringFileHeader or info.flag_bits & 0x1 or \
                head[_LOCAL.size:_LOCAL.size + local[10]] != info.orig_filename.encode(_encoding(info)):
            raise _Refused(f"member {name!r}: its local header does not match the zip directory (or it is encrypted)")
        start = info.header_offset + _LOCAL.size + local[10] + local[11]
        content = head[start - info.header_offset:][:size]
    complete = len(content) == size  # else `content` is the member's first bytes; the rest is read from `start` on
    if not content.startswith(npy_format.MAGIC_PREFIX):  # not an .npy: np.load gives its bytes
        if key in META:
            raise _Refused(f"member {name!r} is not an .npy array")
        return content if complete else _read(fp, start, size)
    length = 10 + int.from_bytes(content[8:10], 'little') if content[6] == 1 else 12 + int.from_bytes(content[8:12], 'little')
    if length > size:
        raise _Refused(f"member {name!r}: its .npy header ({length} bytes) is longer than the member ({size} bytes)")
    content = content if length <= len(content) else _read(fp, start, length)  # a header longer than the first read
    shape, fortran, dtype = _npy_header(content[:length])
    if key in META:  # its `.tolist()`, as phiml.math.load takes it; an object array through the restricted unpickler
        data = content[length:] if complete else _read(fp, start + length, size - length)
        if not dtype.hasobject:
            return np.frombuffer(data, dtype, math.prod(shape)).reshape(shape, order='F' if fortran else 'C').tolist()
        try:
            return unpickle_object_array(data)
        except ValueError as err:
            raise _Refused(f"refused to unpickle member '{name}': {err}; a cache may hold only tensors and plain "
                           f"containers (dict, list, str, numbers)") from None
    if dtype.hasobject:
        raise _Refused(f"array member {name!r} holds Python objects, expected numbers")
    if math.prod(shape) * dtype.itemsize != size - length:
        raise _Refused(f"member {name!r} holds {size - length} bytes of data, its header announces "
                       f"{math.prod(shape) * dtype.itemsize} (truncated or corrupt)")
    array = _Array(name, -1, start + length, size - length, dtype, shape, fortran)
    return _array(None, [content], array._replace(chunk=0, start=length), False, None) if info.compress_type else array


def directory_offsets(archive: zipfile.ZipFile) -> list[int]:
    """Where each member's entry in the zip directory starts, in archive order."""
    offsets, entry = [], archive.start_dir
    for info in archive.infolist():
        offsets.append(entry)
        entry += 46 + len(info.orig_filename.encode(_encoding(info))) + len(info.extra) + len(info.comment)
    return offsets


def _encoding(info: zipfile.ZipInfo) -> str:  # an ASCII name is the same bytes in both (utf-8's codec is faster)
    return 'utf-8' if info.flag_bits & 0x800 or info.orig_filename.isascii() else 'cp437'


def _array(fp, chunks: list[bytes], array: _Array, mmap: bool, target: np.ndarray | None) -> np.ndarray:
    """An array member's data: copied from its chunk (small ones), memory-mapped (large ones, with `mmap`), or read
    with one `readinto`, into `target` where it fits (C order, writable), else into a fresh array."""
    order = 'F' if array.fortran else 'C'
    if array.chunk >= 0:
        return np.ndarray(array.shape, array.dtype, chunks[array.chunk], array.start, order=order).copy(order)
    if mmap:
        return np.asarray(np.memmap(fp, array.dtype, 'r', array.start, array.shape, order))
    fits = target is not None and target.shape == array.shape and target.dtype == array.dtype and not array.fortran \
        and target.flags.c_contiguous and target.flags.writeable
    buffer = target if fits else np.empty(array.shape, array.dtype, order=order)
    fp.seek(array.start)
    if array.nbytes and fp.readinto(memoryview(buffer.T if array.fortran else buffer).cast('B')) != array.nbytes:
        raise EOFError(f"member {array.name!r} ends early (truncated file)")
    return buffer


def _read(fp, offset: int, size: int) -> bytes:
    fp.seek(offset)
    if len(data := fp.read(size)) != size:
        raise EOFError(f"the file ends {size - len(data)} bytes early")
    return data


# A 1.0 header in the layout `numpy.lib.format` writes, with a plain dtype and a shape that has a comma or is empty:
# `ast.literal_eval` (numpy's reader) gives exactly the values it shows
_SIZE = rb"(?:0|[1-9]\d*)"
_WRITTEN = re.compile(rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (False|True), "
                      rb"'shape': \(((?:%s,(?: %s,)*(?: %s)?)?)\), \} *\n" % (_SIZE, _SIZE, _SIZE))


@functools.lru_cache(maxsize=256)
def _npy_header(raw: bytes) -> tuple[tuple, bool, np.dtype]:
    """`(shape, fortran_order, dtype)` of a `.npy` header (versions 1.0 and 2.0): read from the pattern where it
    matches, else by numpy's reader (it parses the header with `ast.literal_eval`, most of a small file's first read)."""
    match = _WRITTEN.fullmatch(raw, 10) if raw[6:8] == bytes((1, 0)) else None
    if match:
        with contextlib.suppress(TypeError):  # a descr numpy does not know: its reader below says so
            shape = tuple(int(size) for size in match[3].split(b',') if size.strip())
            return shape, match[2] == b'True', npy_format.descr_to_dtype(match[1].decode())
    fp = io.BytesIO(raw)
    version = npy_format.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version}, expected 1.0 or 2.0")
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    try:
        return read(fp, max_header_size=len(raw) + 1)
    except tokenize.TokenError as err:  # numpy's second try at a header that is not a Python literal
        text = raw[10 if version == (1, 0) else 12:].decode('latin1').strip()
        raise ValueError(f"the .npy header {text!r} does not parse ({err.args[0]})") from None


def _plan(members: dict[str, Any]) -> tuple[tuple, Any, list[int], list | None, list]:
    """`(members, tree, order, dense, specs)`: how `_assemble` builds a file's tree as `phiml.math.load` does, derived
    from the meta members and checked once per layout. `members`: `(key, value)` of the members handed to the tensors by
    position, in archive order (an `_Array` where an array is read); `tree` with `None` where a tensor goes; which
    stored tensor each of the tree's tensor leaves takes; where every spec is dense, the tree holds no layout and the
    arrays have the specs' sizes, `(names, shape, native sizes)` of each, else None; the unserialized specs."""
    missing = [name for name in META if name not in members]
    if missing:
        raise _Refused(f"not a phiml.math.save file (member {missing[0]!r} missing)")
    tree, specs, paths = (members[name] for name in META)
    try:
        keys = [repr(spec) for spec in specs]  # the specs of equal tensors (the metadata's scalars) repeat
        unique = {key: unserialize_spec(spec) for key, spec in dict(zip(keys, specs)).items()}
        tree, specs = tree['tree'], [unique[key] for key in keys]
        new_paths = _leaf_paths(tree, 'root')
        lookup = {path: i for i, path in enumerate(paths)}  # stored in another order: by path, as phiml.math.load does
        order = list(range(len(specs))) if tuple(paths) == tuple(new_paths) else [lookup[p] for p in new_paths]
        dense = [(s['names'], s['shape'], tuple(s['shape'].get_size(n) for n in s['names'])) for s in specs] \
            if all(s['type'] is Dense for s in specs) and '__layout__' not in repr(tree) else None
    except Exception as err:  # noqa: BLE001 - phiml's parsing of plain but malformed members
        raise _Refused(f"malformed tensor specs, paths or tree ({type(err).__name__}: {err})") from None
    tensors = [(key, value) for key, value in members.items() if key not in META]
    if len(tensors) < len(specs):
        raise _Refused(f"{len(specs)} tensors but only {len(tensors)} array members")
    for (key, value), label in zip(tensors, paths):  # each spec takes at least the next member
        if not isinstance(value, (np.ndarray, _Array)):
            raise _Refused(f"member {key!r} would become (part of) tensor {label!r}, but is not an .npy array")
    fits = dense and all(value.shape == sizes for (_, value), (_, _, sizes) in zip(tensors, dense))
    return tuple(tensors), tree, order, dense if fits else None, specs


def _leaf_paths(node: Any, root: str) -> list[str]:
    """phiml's `attr_paths_from_container` for the trees this reader admits: plain containers and `'__layout__'` dicts."""
    if node is None or node == NATIVE_TENSOR:
        return [root]
    if type(node) is dict and '__layout__' in node:
        return _leaf_paths(node['obj'], f'{root}._obj')
    items = node.items() if type(node) is dict else enumerate(node) if type(node) in (list, tuple) else ()
    return [path for key, value in items for path in _leaf_paths(value, f'{root}[{key}]')]


def _assemble(natives: list[np.ndarray], tree: Any, order: list[int], dense: list | None, specs: list) -> Any:
    """The tree as `phiml.math.load` assembles it from the arrays handed to the tensors (see `_plan`)."""
    if dense:
        return _fill(tree, iter([(natives[i], dense[i]) for i in order]))
    try:
        tensors = assemble_tensors(natives, specs)
        return assemble_tree(tree, [tensors[i] for i in order], attr_type=all_attributes)
    except Exception as err:  # noqa: BLE001 - phiml's own errors on a malformed file
        raise _Refused(f"its members do not assemble into a tree ({type(err).__name__}: {err})") from None


def _fill(node: Any, leaves) -> Any:
    """What phiml's `assemble_tree` makes of a tree of plain containers and dense tensors (`leaves`: native and
    `(names, shape, sizes)` of each tensor in tree order): a tensor for `None`, the native for `'__native__'` (a
    Python scalar where it has no dims), `None` for `'__missing__'`."""
    kind = type(node)
    if node is None or (kind is str and node == NATIVE_TENSOR):
        native, (names, shape, sizes) = next(leaves)
        if node is None:
            return Dense(native, names, shape, _NUMPY)
        return native.item() if not sizes else native  # no dims: a Python scalar
    if kind is str:
        return None if node == MISSING_TENSOR else node
    if kind is dict:
        return {key: _fill(value, leaves) for key, value in node.items()}
    if kind is list or kind is tuple:
        return kind(_fill(value, leaves) for value in node)
    return node


_ALLOWED_GLOBALS = {('numpy._core.multiarray', '_reconstruct'), ('numpy.core.multiarray', '_reconstruct'),
                    ('numpy', 'ndarray'), ('numpy', 'dtype')}
_SCALARS = frozenset((str, bytes, int, float, bool, type(None)))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def unpickle_object_array(data: bytes) -> Any:
    """`.tolist()` of the object array pickled in `data`.

    Raises:
        ValueError: the pickle names a global other than numpy's array reconstruction, is malformed, or holds anything
            but an object array of plain values (exact types).
    """
    try:
        array = _RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, TypeError, IndexError, KeyError, OverflowError) as err:
        raise ValueError(str(err)) from None
    except MemoryError:  # a length field asks for more than memory holds: more than the member's own bytes
        raise ValueError(f"it asks for more memory than there is (its {len(data)} bytes are corrupt)") from None
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise ValueError(f"the pickle holds a {type(array).__name__}, expected an object array")
    try:
        _check_plain([result := array.tolist()])
    except RecursionError:
        raise ValueError("its containers nest too deeply") from None
    return result


def _check_plain(node: Any) -> None:
    """Raises ValueError unless the container `node` holds only plain containers and values (exact types)."""
    kind = type(node)
    if kind is not dict and kind is not list and kind is not tuple:
        raise ValueError(f"it holds a {kind.__name__}, expected only plain containers and values")
    for child in [*node.keys(), *node.values()] if kind is dict else node:
        if type(child) not in _SCALARS:
            _check_plain(child)
