"""Where everything lies in a plain `phiml.math.save` archive, parsed once and reused for files of the same structure.

`parse_layout` reads a whole archive's structure: zip directory (`zipdir`), every local and `.npy` header, the pickled
members. The resulting `Layout` says where each array's data lies and which bytes carry structure. The other sims of
a cache have files of the same size whose only differences are array data, timestamps and CRCs; for such a file,
`Layout.read_regions` reads the few regions that hold structure (and the tiny arrays) and `Layout.matches` compares
every structural byte with the first file's. Only on an exact match is the layout reused; the caller parses anything
else in full.
"""
from __future__ import annotations

import bisect
import itertools
import mmap as mmap_module
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, NamedTuple, Optional, Union

import numpy as np

from harness.errors import CacheError
from .aligned import empty_for_copy
from .npy import HEADER_READ, array_from, header_size, npy_header
from .zipdir import TIMESTAMP_AND_CRC, Directory

META_MEMBERS = ('tree.npy', 'specs.npy', 'paths.npy')
_LOCAL_HEADER = struct.Struct('<4s22xHH')  # zip local file header (30 bytes): signature, name and extra lengths
_LOCAL_TIMESTAMP_AND_CRC = (10, 18)
_STRUCT_CODES = {('b', 1): '?', ('i', 1): 'b', ('i', 2): 'h', ('i', 4): 'i', ('i', 8): 'q', ('u', 1): 'B', ('u', 2): 'H',
                 ('u', 4): 'I', ('u', 8): 'Q', ('f', 2): 'e', ('f', 4): 'f', ('f', 8): 'd'}
# Describes an archive from its meta members (name -> pickle bytes or array) and array shapes: returns the recipe
# (the saved tree with placeholders where arrays go) and the names of the arrays used as plain values.
Describe = Callable[[dict, dict], tuple[Any, set]]
# Where to read large arrays into: by member name, or a callable `(member name, shape, dtype, file offset of the
# data) -> array or None` (place a new array with `aligned.empty_for_copy(shape, dtype, offset)`)
Out = Union[Mapping[str, np.ndarray], Callable[[str, tuple, np.dtype, int], Optional[np.ndarray]]]


class Spot(NamedTuple):
    """Where an array member's data lies and how to read it.

    Attributes:
        name: Member name without '.npy', e.g. 'root[velocity]:0'.
        offset, size: Byte range of the data in the file.
        in_buffer: Position of the data in the region buffer when it lies in a region (tiny members), else None.
        scalar: For a 0-d number used as a plain value: the `struct` that reads it as `.item()` would.
    """
    name: str
    offset: int
    size: int
    dtype: np.dtype
    shape: tuple
    order: str
    in_buffer: int | None = None
    scalar: struct.Struct | None = None


@dataclass(frozen=True, eq=False)
class Layout:
    """The structure of one file, valid for every file of the same size whose structural bytes are identical."""
    file_size: int
    regions: tuple[tuple[int, int], ...]  # byte ranges read per file: everything but the large arrays' data
    mask: int  # the regions' bytes as one little-endian integer: 0xFF over structural bytes, 0 elsewhere
    expected: int  # the structural bytes of the file the layout was parsed from, masked the same way
    spots: tuple[Spot, ...]
    recipe: Any

    def read_regions(self, fp: BinaryIO) -> bytes:
        parts = []
        for start, end in self.regions:
            fp.seek(start)
            parts.append(fp.read(end - start))
        return parts[0] if len(parts) == 1 else b''.join(parts)

    def matches(self, buffer: bytes) -> bool:
        """Whether `buffer`, the regions read from a file, holds exactly this layout's structural bytes."""
        return len(buffer) == sum(end - start for start, end in self.regions) and \
            int.from_bytes(buffer, 'little') & self.mask == self.expected

    def read_arrays(self, path: Path, fp: BinaryIO, buffer: bytes, mmap: bool, out: Out | None = None
                    ) -> dict[str, Any]:
        """Every array of the file: tiny ones from `buffer`, large ones read (or memory-mapped) from `fp`.

        `out` offers, per large member, a C-contiguous array of the member's shape and dtype to read into directly
        (one copy, page cache -> destination): a mapping by member name (e.g. `'root[velocity]:0'`), or a callable
        `(name, shape, dtype, file offset of the data) -> array or None`. A member whose offer is missing or does not
        fit is read as usual, into an array placed for the copy (`aligned.empty_for_copy`).

        Raises:
            CacheError: the file ends before an array does.
        """
        arrays = {}
        for spot in self.spots:
            count = spot.size // spot.dtype.itemsize if spot.dtype.itemsize else 0
            target = None if spot.in_buffer is not None else _target(out, spot)
            if spot.scalar is not None:
                arrays[spot.name] = spot.scalar.unpack_from(buffer, spot.in_buffer)[0]
            elif spot.in_buffer is not None:
                flat = np.frombuffer(buffer, spot.dtype, count, spot.in_buffer)
                arrays[spot.name] = flat.reshape(spot.shape, order=spot.order).copy()
            elif target is not None:
                if _read_into(fp, spot.offset, memoryview(target).cast('B')) != spot.size:
                    raise CacheError(f"{path}: member {spot.name + '.npy'!r} ends early (truncated file)")
                arrays[spot.name] = target
            elif mmap:
                arrays[spot.name] = mapped(fp, spot.offset, spot.size, spot.dtype, count).reshape(spot.shape, order=spot.order)
            else:
                data = empty_for_copy((count,), spot.dtype, spot.offset)  # placed for the copy from the page cache
                if _read_into(fp, spot.offset, memoryview(data).cast('B')) != spot.size:
                    raise CacheError(f"{path}: member {spot.name + '.npy'!r} ends early (truncated file)")
                arrays[spot.name] = data.reshape(spot.shape, order=spot.order)
        return arrays


def parse_layout(path: Path, fp: BinaryIO, directory: Directory, describe: Describe) -> tuple[Layout, bytes]:
    """Parses a plain archive in full: every header and pickle, and where each array's data lies.

    The bytes read per file (the regions) are everything but the data of the large arrays; of those, the structural
    bytes are all but the tiny arrays' data and the timestamps and CRCs of the zip records.

    Returns:
        The layout, and its regions as read from this file.

    Raises:
        CacheError: a corrupt zip entry or `.npy` header, an array of Python objects, or what `describe` refuses.
    """
    reader = _ReadAhead(fp, directory.file_size, directory.tail, directory.tail_start)
    unchecked = [(e.record_offset + TIMESTAMP_AND_CRC[0], e.record_offset + TIMESTAMP_AND_CRC[1])
                 for e in directory.entries]
    members, spots = {}, []
    for entry in sorted(directory.entries, key=lambda e: e.header_offset):
        local = reader.read(entry.header_offset, _LOCAL_HEADER.size)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(local) if len(local) == 30 else (b'', 0, 0)
        if signature != b'PK\x03\x04':
            raise CacheError(f"{path}: corrupt zip entry {entry.filename!r}")
        start = entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        raw = reader.read(start, min(entry.file_size, header_size(reader.read(start, min(entry.file_size, 12)))))
        shape, fortran, dtype, header_length = npy_header(path, entry.filename, raw, entry.file_size)
        data, size = start + header_length, entry.file_size - header_length
        unchecked.append((entry.header_offset + _LOCAL_TIMESTAMP_AND_CRC[0], entry.header_offset + _LOCAL_TIMESTAMP_AND_CRC[1]))
        if entry.filename in META_MEMBERS:
            members[entry.filename] = reader.read(data, size) if dtype.hasobject else \
                array_from(path, entry.filename, reader.read(data, size), shape, fortran, dtype)
        elif dtype.hasobject:
            raise CacheError(f"{path}: array member {entry.filename!r} holds Python objects, expected numbers")
        else:
            spots.append(Spot(entry.filename[:-4], data, size, dtype, shape, 'F' if fortran else 'C'))
    recipe, natives = describe(members, {spot.name: spot.shape for spot in spots})
    large = [(spot.offset, spot.offset + spot.size) for spot in spots if spot.size > HEADER_READ]
    regions = [(a, b) for a, b in zip([0] + [end for _, end in large], [start for start, _ in large] + [directory.file_size]) if b > a]

    ends, skipped = [end for _, end in large], list(itertools.accumulate(end - start for start, end in large))

    def to_buffer(offset: int) -> int:  # position in the regions of a file offset outside the large arrays
        before = bisect.bisect_right(ends, offset)
        return offset - skipped[before - 1] if before else offset

    spots = tuple(spot if spot.size > HEADER_READ else spot._replace(
        in_buffer=to_buffer(spot.offset), scalar=_scalar_struct(spot) if spot.name in natives else None) for spot in spots)
    buffer = b''.join([reader.read(a, b - a) for a, b in regions])
    mask = bytearray(b'\xff') * len(buffer)
    for start, end in unchecked + [(spot.offset, spot.offset + spot.size) for spot in spots if spot.in_buffer is not None]:
        mask[to_buffer(start):to_buffer(end)] = bytes(end - start)
    mask = int.from_bytes(mask, 'little')
    return Layout(directory.file_size, tuple(regions), mask, int.from_bytes(buffer, 'little') & mask, spots, recipe), buffer


def _target(out: Out | None, spot: Spot) -> np.ndarray | None:
    """The array `out` offers for `spot`'s data, if it fits (same shape and dtype, C order, writable)."""
    if out is None:
        return None
    target = out(spot.name, spot.shape, spot.dtype, spot.offset) if callable(out) else out.get(spot.name)
    fits = target is not None and target.shape == spot.shape and target.dtype == spot.dtype and spot.order == 'C' \
        and target.flags.c_contiguous and target.flags.writeable
    return target if fits else None


def _read_into(fp: BinaryIO, offset: int, view: memoryview) -> int:
    """Reads the file from `offset` into `view` until it is full or the file ends; returns the bytes read (an
    unbuffered file's `readinto` is one system call, which returns at most ~2 GiB)."""
    fp.seek(offset)
    done = 0
    while done < len(view):
        count = fp.readinto(view[done:])
        if not count:
            break
        done += count
    return done


def mapped(fp: BinaryIO, offset: int, size: int, dtype: np.dtype, count: int) -> np.ndarray:
    """A read-only flat array over `size` bytes of the open file at `offset`; the mapping lives as long as the array.

    (`np.memmap` reopens the file by name and costs ~5x more.)
    """
    start = offset - offset % mmap_module.ALLOCATIONGRANULARITY
    mapping = mmap_module.mmap(fp.fileno(), offset - start + size, access=mmap_module.ACCESS_READ, offset=start)
    return np.frombuffer(mapping, dtype, count, offset - start)


def _scalar_struct(spot: Spot) -> struct.Struct | None:
    """How `struct` reads the 0-d number at `spot` as the Python value `.item()` would give; None if it cannot."""
    code = _STRUCT_CODES.get((spot.dtype.kind, spot.dtype.itemsize))
    if spot.shape != () or code is None or spot.dtype.str[0] not in '<>|':
        return None
    return struct.Struct(('>' if spot.dtype.str[0] == '>' else '<') + code)


class _ReadAhead:
    """Reads a file at given offsets `HEADER_READ` bytes at a time, serving requests from any earlier read that holds
    them (a structure parse reads the head and the tail of a file, and asks for pieces of both in turn).

    Args:
        fp: The open file.
        file_size: Its size in bytes.
        buffer: Bytes already read, starting at offset `start`.
    """

    def __init__(self, fp: BinaryIO, file_size: int, buffer: bytes = b'', start: int = 0):
        self.fp, self.file_size = fp, file_size
        self.chunks = [(start, buffer)] if buffer else []

    def read(self, offset: int, need: int) -> bytes:
        """`need` bytes from `offset`, fewer only at the end of the file."""
        need = max(0, min(need, self.file_size - offset))
        for start, chunk in self.chunks:
            if start <= offset and offset + need <= start + len(chunk):
                return chunk[offset - start:offset - start + need]
        self.fp.seek(offset)
        chunk = self.fp.read(max(need, HEADER_READ))
        self.chunks.append((offset, chunk))
        return chunk[:need]
