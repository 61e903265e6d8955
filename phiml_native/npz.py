"""Safe, fast reading of files written by `phiml.math.save`, without running any code the file carries.

`phiml.math.save` writes an uncompressed `.npz` (a zip of `.npy` members): `tree` (a pickled structure with `None`
where a tensor goes and `'__native__'` where a plain array goes), `specs` (pickled dicts: dim names, types, item names,
sizes), `paths` (unicode array) and one member `<path>:0` per array. `phiml.math.load` unpickles `tree` with
`allow_pickle=True`, so a crafted file executes code; here pickles go through a restricted unpickler (`npy`).

Speed: a cache file holds one large array per field and a dozen tiny ones (the metadata numbers), so per-member parsing
decides how fast a small sim reads. The first file of a given size is parsed in full; the other sims of a cache, whose
files differ only in array data, timestamps and CRCs, are verified byte for byte against that layout and then only
their arrays are read (`npz_layout`). The file is read unbuffered (each read one exact system call, no 8 KB
read-ahead copied twice); large arrays arrive with one `readinto`, or memory-mapped. Archives other than
the plain kind `phiml.math.save` writes (compressed, ZIP64, comments) are read with `zipfile`.
"""
from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from phiml.backend import NUMPY
from phiml.math import Shape

from harness.errors import CacheError
from . import npy
from .npz_layout import META_MEMBERS, Layout, Out, parse_layout
from .tensors import dense, shape_of
from .zipdir import read_directory

_MAX_LAYOUTS = 32
_LAYOUTS: dict[int, Layout] = {}  # by file size


class _TensorLeaf(NamedTuple):
    name: str
    shape: Shape


class _NativeLeaf(NamedTuple):
    name: str


def read_phiml_npz(path: str | os.PathLike, mmap: bool = False, out: Out | None = None) -> Any:
    """Reads a `phiml.math.save` file into the structure it was saved from (tensors backed by numpy).

    Args:
        path: `.npz` file.
        mmap: Memory-map the large arrays instead of reading them (read-only views into the file). Tiny arrays (the
            metadata numbers) are read either way, and so is every array of an archive that is not a plain zip.
        out: Arrays to read large members into (same shape and dtype, C-contiguous), by member name (e.g.
            `'root[velocity]:0'`) or from a callable `(member name, shape, dtype, file offset of the data) -> array or
            None` (asked once per large member; `aligned.empty_for_copy(shape, dtype, offset)` places a new array
            for the copy); the returned tensor is then backed by it. Ignored where it does not fit.

    Raises:
        CacheError: the file is missing, not a zip, not in phiml's format, or carries anything but plain data.
    """
    try:
        with open(path, 'rb', buffering=0) as fp:  # unbuffered: every read is one exact-sized syscall
            layout = _LAYOUTS.get(os.fstat(fp.fileno()).st_size)
            buffer = layout.read_regions(fp) if layout else b''
            if layout is None or not layout.matches(buffer):
                directory = read_directory(fp)
                if directory is None:
                    return _read_with_zipfile(path, fp)
                layout, buffer = parse_layout(path, fp, directory, lambda members, shapes: _describe(path, members, shapes))
                if len(_LAYOUTS) >= _MAX_LAYOUTS:
                    _LAYOUTS.pop(next(iter(_LAYOUTS)))
                _LAYOUTS[layout.file_size] = layout
            arrays = layout.read_arrays(path, fp, buffer, mmap, out)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as err:
        if isinstance(err, CacheError):
            raise
        raise CacheError(f"{path}: not a readable .npz file ({str(err).splitlines()[0][:200]})") from None
    return _build(layout.recipe, arrays)


def clear_caches() -> None:
    """Forgets the parsed layouts, `.npy` headers, pickles and shapes: the next read is as cold as a new process's."""
    _LAYOUTS.clear()
    npy.clear_caches()
    shape_of.cache_clear()


def _read_with_zipfile(path: Path, fp: BinaryIO) -> Any:
    """Any other zip layout (compressed members, ZIP64, comments): every member inflated by `zipfile` and parsed."""
    with zipfile.ZipFile(fp) as zf:
        raw = {info.filename: zf.read(info) for info in zf.infolist()}
    members, arrays = {}, {}
    for name, content in raw.items():
        shape, fortran, dtype, header_length = npy.npy_header(path, name, content, len(content))
        if dtype.hasobject and name not in META_MEMBERS:
            raise CacheError(f"{path}: array member {name!r} holds Python objects, expected numbers")
        value = content[header_length:] if dtype.hasobject else \
            npy.array_from(path, name, content[header_length:], shape, fortran, dtype)
        if name in META_MEMBERS:
            members[name] = value
        else:
            arrays[name[:-4]] = value
    recipe, _ = _describe(path, members, {name: a.shape for name, a in arrays.items()})
    return _build(recipe, arrays)


def _describe(path: Path, members: dict[str, Any], shapes: dict[str, tuple]) -> tuple[Any, set[str]]:
    """The recipe of an archive (its tree with `_TensorLeaf` / `_NativeLeaf` where arrays go) from its raw `tree`,
    `specs` and `paths` members and its array shapes; and the names of the arrays used as plain values.

    Raises:
        CacheError: a meta member is missing or malformed, the tree holds anything but plain data, or a tensor's spec
            does not match its array.
    """
    for required in META_MEMBERS:
        if required not in members:
            raise CacheError(f"{path}: not a phiml.math.save file (member {required!r} missing)")
    tree, specs = (npy.unpickle_member(path, name, members[name]) for name in ('tree.npy', 'specs.npy'))
    paths = members['paths.npy']
    if not isinstance(paths, np.ndarray) or paths.dtype.kind != 'U':
        raise CacheError(f"{path}: member 'paths.npy' is not an array of strings")
    paths = paths.tolist()
    if not isinstance(tree, dict) or 'tree' not in tree:
        raise CacheError(f"{path}: member 'tree' is {type(tree).__name__}, expected {{'tree': ...}}")
    npy.check_plain(path, tree['tree'], 'tree')  # each spec is checked where a tensor uses it
    if not isinstance(specs, list) or not isinstance(paths, list) or len(specs) != len(paths):
        raise CacheError(f"{path}: {len(specs)} specs for {len(paths)} paths (expected one spec per path)")
    natives: set[str] = set()
    return _recipe(path, tree['tree'], 'root', dict(zip(paths, specs)), shapes, natives), natives


def _recipe(path: Path, node: Any, p: str, specs: dict[str, Any], shapes: dict[str, tuple], natives: set[str]) -> Any:
    if node is None:
        if p not in specs or f'{p}:0' not in shapes:
            raise CacheError(f"{path}: no array stored for tensor {p!r}")
        return _TensorLeaf(f'{p}:0', _spec_shape(path, p, specs[p], shapes[f'{p}:0']))
    if node == '__native__':
        if f'{p}:0' not in shapes:
            raise CacheError(f"{path}: no array stored for {p!r}")
        natives.add(f'{p}:0')
        return _NativeLeaf(f'{p}:0')
    if node == '__missing__':  # phiml.math.save's placeholder for None
        return None
    if isinstance(node, dict):
        return {k: _recipe(path, v, f'{p}[{k}]', specs, shapes, natives) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        items = [_recipe(path, v, f'{p}[{i}]', specs, shapes, natives) for i, v in enumerate(node)]
        return tuple(items) if isinstance(node, tuple) else items
    return node


def _spec_shape(path: Path, p: str, spec: Any, sizes: tuple) -> Shape:
    npy.check_plain(path, spec, 'specs')
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


def _build(node: Any, arrays: dict[str, Any]) -> Any:
    kind = type(node)
    if kind is _TensorLeaf:
        return dense(arrays[node.name], node.shape, NUMPY)
    if kind is _NativeLeaf:
        value = arrays[node.name]  # as stored: wrapping it in a Tensor could cast it to the default precision
        return value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    if kind is dict:
        return {k: _build(v, arrays) for k, v in node.items()}
    if kind is list:
        return [_build(v, arrays) for v in node]
    if kind is tuple:
        return tuple(_build(v, arrays) for v in node)
    return node
