"""The member list of a plain zip archive, parsed from its central directory with one read at the end of the file.

`zipfile.ZipFile` spends ~130 µs opening a dozen-member archive (Python-level parsing of every record, ZIP64 probing),
more than `np.load` needs for all the data of a 32x32 simulation. The files `phiml.math.save` writes are the plainest
kind of zip: no archive comment, no ZIP64 records below 4 GiB, every member stored uncompressed. `read_directory`
parses exactly that kind and answers None for anything else, so that the caller falls back on `zipfile`.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, NamedTuple

TAIL = 8192  # bytes read from the end: central directory, end record, and the small members stored just before them
_END = struct.Struct('<4s4H2LH')  # end of central directory record, 22 bytes
TIMESTAMP_AND_CRC = (12, 20)  # bytes of a central directory record that differ between otherwise identical archives
# central directory file header (46 bytes), unpacking only signature, flags, method, compressed and uncompressed size,
# name, extra and comment lengths, and the local header's offset
_CENTRAL = struct.Struct('<4s4xHH8xLLHHH8xL')
_END_SIGNATURE = b'PK\x05\x06'
_CENTRAL_SIGNATURE = b'PK\x01\x02'
_STORED = 0
_UTF8_FLAG = 0x800
_ZIP64_MARK = 0xFFFFFFFF


class Entry(NamedTuple):
    """One member: name, offset of its local header, compression method (0 = stored), uncompressed size, and the
    offset of its central directory record."""
    filename: str
    header_offset: int
    compress_type: int
    file_size: int
    record_offset: int


class Directory(NamedTuple):
    """The members, the last bytes of the file (`tail`, from offset `tail_start`) that were read to find them, the
    size of the file and where the central directory starts."""
    entries: list[Entry]
    tail: bytes
    tail_start: int
    file_size: int
    directory_offset: int


def read_directory(fp: BinaryIO) -> Directory | None:
    """Reads the central directory of the zip archive open in `fp` (binary, seekable).

    Returns:
        The directory, or None when the archive is not a plain one (comment, ZIP64, compressed member, several disks,
        a directory larger than `TAIL`, bytes before the archive) or not a zip at all: then `zipfile` must read it.

    Raises:
        ValueError: a central directory record is malformed.
        struct.error: the directory ends early.
    """
    size = os.fstat(fp.fileno()).st_size
    tail_start = max(0, size - TAIL)
    fp.seek(tail_start)
    tail = fp.read(size - tail_start)
    if len(tail) < _END.size or tail[-_END.size:-_END.size + 4] != _END_SIGNATURE:
        return None
    _, disk, directory_disk, count_here, count, directory_size, directory_offset, comment = _END.unpack(tail[-_END.size:])
    if disk or directory_disk or comment or count_here != count or directory_offset == _ZIP64_MARK:
        return None
    position = directory_offset - tail_start
    if position < 0:
        return None
    if directory_offset + directory_size != size - _END.size:  # data before the archive, or damage: zipfile decides
        return None
    entries = []
    for _ in range(count):
        signature, flags, method, compressed, file_size, name_length, extra_length, comment_length, offset = \
            _CENTRAL.unpack_from(tail, position)
        if signature != _CENTRAL_SIGNATURE:
            raise ValueError(f"no central directory record at offset {tail_start + position}")
        if method != _STORED or _ZIP64_MARK in (compressed, file_size, offset):
            return None
        start = position + _CENTRAL.size
        name = tail[start:start + name_length].decode('utf-8' if flags & _UTF8_FLAG else 'cp437')
        entries.append(Entry(name, offset, method, file_size, tail_start + position))
        position = start + name_length + extra_length + comment_length
    return Directory(entries, tail, tail_start, size, directory_offset)
