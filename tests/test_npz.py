"""The native reader against stock `phiml.math.load`, over files written by stock `phiml.math.save`: for every file it
accepts it returns exactly what `phiml.math.load` returns; anything else is refused with a `CacheError` naming it."""
import contextlib
import io
import pickle
import re
import sys
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from phiml import math
from numpy.lib import format as npy_format
from phiml.math import Tensor, batch, channel, spatial

from harness.errors import CacheError
from phiml_native import PhiMLDataManager, read_phiml_npz
from phiml_native import npz


def _velocity(*spatial_sizes, frames=3, seed=0):
    names = 'xyz'[:len(spatial_sizes)]
    values = np.random.default_rng(seed).normal(size=(frames, *spatial_sizes, len(names))).astype(np.float32)
    return math.wrap(values, batch('time'), spatial(','.join(names)), channel(vector=','.join(names)))


def _scalar(*spatial_sizes, frames=3, dtype=np.float32, seed=1):
    names = 'xyz'[:len(spatial_sizes)]
    values = np.random.default_rng(seed).normal(size=(frames, *spatial_sizes)).astype(dtype)
    return math.wrap(values, batch('time'), spatial(','.join(names)))


_META = {'scenario': 'burgers', 'sim_index': 3, 'seed': 42, 'resolution': [4, 5], 'dt': 0.01, 'n_frames': 3,
         'fields': ['velocity'], 'flag': True}

CORPUS = {
    'cache-file-2d': lambda: {'velocity': _velocity(4, 5), 'metadata': dict(_META)},
    'vector-1d': lambda: {'velocity': _velocity(7), 'metadata': {'n_frames': 3}},
    'vector-3d-non-square': lambda: {'velocity': _velocity(2, 3, 4), 'metadata': {'resolution': (2, 3, 4)}},
    'scalar-2d-non-square': lambda: {'density': _scalar(6, 2), 'metadata': {'fields': ['density']}},
    'two-fields': lambda: {'density': _scalar(4, 4), 'velocity': _velocity(4, 4), 'metadata': dict(_META)},
    'bare-tensor': lambda: _velocity(3, 2),
    'compact-zeros': lambda: {'velocity': math.zeros(batch(time=3), spatial(x=4, y=5), channel(vector='x,y')),
                              'metadata': dict(_META)},
    'expanded-vector': lambda: {'velocity': math.expand(_scalar(4, 5), channel(vector='x,y')), 'metadata': dict(_META)},
    'expanded-time': lambda: {'velocity': math.expand(_velocity(4, 5, frames=1).time[0], batch(time=3))},
    'native-order-differs': lambda: {'v': math.wrap(np.arange(12.).reshape(4, 3), channel('c'), spatial('x'))},
    'list-names': lambda: {'v': math.wrap(np.arange(3.), spatial('x')) + math.wrap(np.ones((3, 4)), spatial('x'),
                                                                               channel('c'))},
    'ints-and-float64': lambda: {'i32': _scalar(3, frames=2, dtype=np.int32), 'f64': _scalar(3, dtype=np.float64),
                                 'metadata': {'count': 7, 'big': 2 ** 40, 'ratio': 0.5, 'yes': False}},
    'numpy-values': lambda: {'metadata': {'f32': np.float32(1.5), 'i16': np.int16(-3), 'array': np.arange(4),
                                          'matrix': np.ones((2, 3), np.float32)}},
    'strings-none-nested': lambda: {'v': _scalar(2), 'metadata': {
        'note': None, 'name': 'ünïcode', 'empty': [], 'nested': {'a': {'b': [1, 'two', None, (3.0, 'four')]}},
        'tuple': (1, 2), 'missing-word': '__missing__', 'bytes': b'raw'}},
    'layout': lambda: {'v': _scalar(2), 'names': math.layout(['a', 'b'], channel('c'))},
    'no-tensors': lambda: {'metadata': {'only': 'strings'}},
    'fortran-order': lambda: {  # stored with fortran_order=True: one array small enough to share a read, one not
        'small': math.wrap(np.asfortranarray(np.arange(6.).reshape(2, 3)), spatial('x,y')),
        'large': math.wrap(np.asfortranarray(np.random.default_rng(2).normal(size=(40, 30))), spatial('x,y'))},
}


def _save(tmp_path, name):
    path = tmp_path / f'{name}.npz'
    math.save(str(path), CORPUS[name]())
    return path


def _append(path, member, content: bytes):
    with zipfile.ZipFile(path, 'a') as zf:
        zf.writestr(member, content)


def assert_same_as_stock(ours, theirs, where='root'):
    """Field by field: type, shape (names, dim types, item names, sizes), native dims, dtype, values bitwise,
    and for plain values their value and Python type."""
    __tracebackhide__ = True
    assert type(ours) is type(theirs), f"{where}: {type(ours).__name__} != {type(theirs).__name__}"
    if isinstance(theirs, Tensor):
        assert ours.shape == theirs.shape and ours.shape.names == theirs.shape.names, f"{where}: {ours.shape} != {theirs.shape}"
        assert [d.dim_type for d in ours.shape] == [d.dim_type for d in theirs.shape], f"{where}: dim types"
        assert ours.shape.item_names == theirs.shape.item_names, f"{where}: item names"
        if hasattr(theirs, '_obj'):  # a layout: a tree of plain values with a shape
            assert_same_as_stock(ours._obj, theirs._obj, f'{where}._obj')
            return
        assert ours.dtype == theirs.dtype, f"{where}: dtype {ours.dtype} != {theirs.dtype}"
        assert ours.backend == theirs.backend, f"{where}: backend"
        if hasattr(theirs, '_names'):  # which dims are stored (a compact tensor stores fewer than its shape has)
            assert type(ours._names) is type(theirs._names) and tuple(ours._names) == tuple(theirs._names), where
            assert_same_as_stock(ours._native, theirs._native, f'{where}._native')
        else:
            assert_same_as_stock(ours.numpy(theirs.shape.names), theirs.numpy(theirs.shape.names), f'{where}.values')
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, f"{where}: {ours.dtype}{ours.shape}"
        assert ours.flags.c_contiguous == theirs.flags.c_contiguous, f"{where}: memory order"
        assert ours.tobytes() == theirs.tobytes(), f"{where}: values differ"
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), f"{where}: keys {list(ours)} != {list(theirs)}"
        for key in theirs:
            assert_same_as_stock(ours[key], theirs[key], f'{where}[{key!r}]')
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{where}: length"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_as_stock(a, b, f'{where}[{i}]')
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"


@pytest.mark.parametrize('name', sorted(CORPUS))
@pytest.mark.parametrize('mmap', [False, True], ids=['read', 'mapped'])
def test_reads_what_phiml_load_reads(tmp_path, name, mmap):
    path = _save(tmp_path, name)
    if name == 'fortran-order':
        with zipfile.ZipFile(path) as archive:
            assert all(b"'fortran_order': True" in archive.read(f'root[{key}]:0.npy')[:128] for key in ('small', 'large'))
    assert_same_as_stock(read_phiml_npz(path, mmap=mmap), math.load(str(path)))


@pytest.mark.parametrize('member, content', [
    ('README', b'written by hand, not an array'),
    ('README.txt', b'x' * 10000),
    ('extra.npy', None),  # an .npy array member
], ids=['readme', 'large-text', 'extra-array'])
def test_extra_member_after_the_arrays_accepted_as_stock_does(tmp_path, member, content):
    path = _save(tmp_path, 'cache-file-2d')
    if content is None:
        buffer = io.BytesIO()
        np.save(buffer, np.arange(3))
        content = buffer.getvalue()
    _append(path, member, content)
    assert_same_as_stock(read_phiml_npz(path), math.load(str(path)))


def test_compressed_archive_read_as_stock_reads_it(tmp_path):
    source = _save(tmp_path, 'cache-file-2d')
    target = tmp_path / 'compressed.npz'
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert_same_as_stock(read_phiml_npz(target), math.load(str(target)))


def test_every_cache_sim_equals_phiml_load(cache_dirs, tiny_config):
    manager = PhiMLDataManager(cache_dirs['phiml'])
    for sim in tiny_config.all_sims:
        path = manager.get_cached_path(sim)
        assert_same_as_stock(read_phiml_npz(path), math.load(str(path)))


def test_mapped_arrays_are_read_only_views_of_the_file(tmp_path):
    path = tmp_path / 'large.npz'
    math.save(str(path), {'velocity': _velocity(32, 32), 'metadata': dict(_META)})
    assert_same_as_stock(read_phiml_npz(path, mmap=True), math.load(str(path)))
    velocity = read_phiml_npz(path, mmap=True)['velocity']._native
    assert not velocity.flags.writeable and not velocity.flags.owndata
    assert read_phiml_npz(path)['velocity']._native.flags.writeable


def test_reads_into_the_arrays_offered(tmp_path):
    path = tmp_path / 'large.npz'
    math.save(str(path), {'velocity': _velocity(32, 32), 'metadata': dict(_META)})
    target = np.empty((3, 32, 32, 2), np.float32)
    data = read_phiml_npz(path, out={'root[velocity]:0': target, 'root[other]:0': np.empty(1)})
    assert data['velocity']._native is target
    assert_same_as_stock(data, math.load(str(path)))
    ignored = read_phiml_npz(path, out={'root[velocity]:0': np.empty((3, 32, 32, 2), np.float64)})  # does not fit
    assert_same_as_stock(ignored, math.load(str(path)))


def test_one_read_per_large_array(tmp_path, monkeypatch):
    calls = []

    class Counting(io.BufferedReader):
        def readinto(self, buffer):
            calls.append(len(buffer))
            return super().readinto(buffer)

    monkeypatch.setattr(npz, 'open', lambda path, mode, **_: Counting(io.FileIO(path, mode)), raising=False)
    path = _save(tmp_path, 'cache-file-2d')
    read_phiml_npz(path)
    assert calls == []  # a 3x4x5x2 field is small: read with its neighbours
    math.save(str(path), {'velocity': _velocity(256, 256), 'metadata': dict(_META)})  # beyond WHOLE: not read whole
    assert_same_as_stock(read_phiml_npz(path), math.load(str(path)))
    assert [n for n in calls if n > npz.HEAD] == [3 * 256 * 256 * 2 * 4]  # the scalars come from the read buffer


class _Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _with_members(source, target, **members):
    """`source` rewritten by `np.savez` (as `phiml.math.save` writes) with some members replaced."""
    with np.load(source, allow_pickle=True) as original:
        arrays = {name: original[name] for name in original.files}
    arrays.update(members)
    np.savez(target, **arrays)
    return target


@pytest.mark.parametrize('member, words', [
    ('tree', "refused to unpickle member 'tree.npy': global 'io.open' is not allowed"),
    ('specs', "refused to unpickle member 'specs.npy': global 'io.open' is not allowed"),
    ('root[metadata][seed]:0', "array member 'root[metadata][seed]:0.npy' holds Python objects, expected numbers"),
    ('extra', "array member 'extra.npy' holds Python objects, expected numbers"),
], ids=['tree', 'specs', 'array-member', 'extra-member'])
def test_crafted_pickle_refused_and_never_run(tmp_path, member, words):
    marker = tmp_path / 'pwned'
    source = _save(tmp_path, 'cache-file-2d')
    payload = np.asarray({'tree': _Payload(marker)} if member == 'tree' else [_Payload(marker)], dtype=object)
    path = _with_members(source, tmp_path / 'crafted.npz', **{member: payload})
    with pytest.raises(CacheError) as info:
        read_phiml_npz(path)
    assert str(path) in str(info.value) and words in str(info.value)
    assert not marker.exists()
    with contextlib.suppress(Exception):  # the payload is live: stock loading runs it (and may fail afterwards)
        math.load(str(path))
    assert marker.exists()


def _deep(levels):
    node = []
    for _ in range(levels):
        node = [node]
    return node


@pytest.mark.parametrize('value, words', [
    ({1, 2}, "it holds a set, expected only plain containers and values"),
    (frozenset({1}), "it holds a frozenset, expected only plain containers and values"),
    (bytearray(b'ab'), "global 'builtins.bytearray' is not allowed"),  # np.save pickles with protocol 3
    (np.zeros(2), "it holds a ndarray, expected only plain containers and values"),
    ({'a': [1, (2, {3: {4}})]}, "it holds a set, expected only plain containers and values"),
    (_deep(5000), "its containers nest too deeply"),
], ids=['set', 'frozenset', 'bytearray', 'nested-array', 'set-deep-inside', 'deep-nesting'])
def test_tree_holding_anything_but_plain_values_refused(tmp_path, value, words):
    """Built without any global but numpy's own, these pass the unpickler: the check of what it built refuses them."""
    source = _save(tmp_path, 'cache-file-2d')
    with np.load(source, allow_pickle=True) as original:
        tree = original['tree'].tolist()
    tree['tree']['metadata']['odd'] = value
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pickling recurses too
    try:
        path = _with_members(source, tmp_path / 'odd.npz', tree=np.asarray(tree, dtype=object))
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CacheError) as info:
        read_phiml_npz(path)
    assert str(path) in str(info.value) and f"refused to unpickle member 'tree.npy': {words}" in str(info.value)


def test_specs_naming_phiml_classes_refused(tmp_path):
    """`phiml.math.save` pickles the classes of a non-uniform stack's parts: stock loading imports them."""
    path = tmp_path / 'stack.npz'
    math.save(str(path), {'s': math.stack([math.ones(spatial(x=2)), math.zeros(spatial(x=3))], channel('c'))})
    with pytest.raises(CacheError, match="member 'specs.npy': global 'phiml.math._tensors.Dense' is not allowed"):
        read_phiml_npz(path)


def test_member_inserted_before_the_arrays_refused(tmp_path):
    """Stock `phiml.math.load` hands members to tensors by position: a member before the arrays shifts them all."""
    source = _save(tmp_path, 'cache-file-2d')
    path = tmp_path / 'shifted.npz'
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, 'w') as dst:
        for info in src.infolist():
            if info.filename == 'root[velocity]:0.npy':
                dst.writestr('README', b'hello')
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CacheError, match=r"member 'README' .* tensor 'root\[velocity\]'"):
        read_phiml_npz(path)


@pytest.mark.parametrize('damage, words', [
    (lambda data: b'garbage', 'not a readable .npz file'),
    (lambda data: b'JUNK' + data, 'not a zip archive'),
    (lambda data: data[:len(data) // 2], 'not a readable .npz file'),
    (lambda data: data[:3000] + data[-2000:], 'not a readable .npz file'),
], ids=['garbage', 'prefixed', 'truncated', 'middle-cut'])
def test_damaged_files_refused(tmp_path, damage, words):
    path = _save(tmp_path, 'cache-file-2d')
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CacheError, match=str(path)) as info:
        read_phiml_npz(path)
    assert words in str(info.value)


def test_every_truncation_refused(tmp_path):
    """Cut anywhere, a file is refused with a `CacheError`, read cold or by the layout of the whole file."""
    source = tmp_path / 'small.npz'
    math.save(str(source), {'velocity': _velocity(3, 2, frames=2), 'metadata': {'dt': 0.5, 'fields': ['velocity']}})
    raw, path = source.read_bytes(), tmp_path / 'cut.npz'
    for size in range(len(raw)):
        path.write_bytes(raw[:size])
        for warm in (False, True):
            npz.clear_caches()
            if warm:
                read_phiml_npz(source)
            with pytest.raises(CacheError, match=f"^{path}: "):
                read_phiml_npz(path)


def _member_data(path, name: str) -> int:
    """Where the data of the stored member `name` starts in the zip `path`."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    local = path.read_bytes()[info.header_offset:info.header_offset + 30]
    return info.header_offset + 30 + int.from_bytes(local[26:28], 'little') + int.from_bytes(local[28:30], 'little')


def test_an_npy_header_that_does_not_parse_refused(tmp_path):
    """numpy tokenizes a header that is no Python literal (`tokenize.TokenError` on an unclosed bracket)."""
    path = _save(tmp_path, 'cache-file-2d')
    raw = bytearray(path.read_bytes())
    start = _member_data(path, 'root[metadata][dt]:0.npy')
    end = raw.index(b'\n', start)
    assert raw[end - 1:end] == b' '
    raw[end - 1:end] = b'['
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError) as info:
        read_phiml_npz(path)
    assert str(info.value).startswith(f"{path}: not a readable .npz file (the .npy header \"{{'descr': '<f8', "
                                      f"'fortran_order': False, 'shape': (), }}")
    assert str(info.value).endswith("[\" does not parse (EOF in multi-line statement))")


def _raw_header(text: str, version=(1, 0), pad=64) -> bytes:
    """A `.npy` header holding `text`, padded with spaces to a multiple of `pad` bytes (numpy pads to 64)."""
    size = 2 if version == (1, 0) else 4
    body = text.encode('latin1')
    body += b' ' * (-(8 + size + len(body) + 1) % pad) + b'\n'
    return npy_format.magic(*version) + len(body).to_bytes(size, 'little') + body


def _numpy_reads(raw: bytes):
    fp = io.BytesIO(raw)
    version = npy_format.read_magic(fp)
    return (npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0)(fp)


def _header_or_error(read, raw: bytes):
    try:
        return read(raw)
    except ValueError as err:  # numpy's message may show an object's address
        return 'ValueError', re.sub(r' at 0x[0-9a-f]+', '', str(err))


@pytest.mark.parametrize('header', [
    {'descr': '<f4', 'fortran_order': False, 'shape': (41, 256, 1)},
    {'descr': '>f8', 'fortran_order': True, 'shape': (2, 3)},
    {'descr': '|b1', 'fortran_order': False, 'shape': ()},
    {'descr': '<U29', 'fortran_order': False, 'shape': (8,)},
    {'descr': '|O', 'fortran_order': False, 'shape': (0, 5)},
    {'descr': '<i8', 'fortran_order': False, 'shape': (123456789012,)},
], ids=['f4', 'big-endian-fortran', 'bool-scalar', 'unicode', 'object-empty', 'huge'])
def test_headers_numpy_writes_are_taken_without_its_reader(header, monkeypatch):
    """A header as `numpy.lib.format` writes it gives the values numpy reads from it, without numpy's reader
    (`ast.literal_eval`, most of a small file's first read)."""
    npy_format.write_array_header_1_0(written := io.BytesIO(), header)
    raw = written.getvalue()
    expected = _numpy_reads(raw)
    npz.clear_caches()
    monkeypatch.setattr(npy_format, 'read_array_header_1_0', lambda *args, **kwargs: pytest.fail("numpy's reader ran"))
    assert npz._npy_header(raw) == expected
    assert type(expected[2]) is type(npz._npy_header(raw)[2])


@pytest.mark.parametrize('raw', [
    _raw_header("{'shape': (3, 4), 'fortran_order': False, 'descr': '<f4'}"),
    _raw_header('{"descr": "<f4", "fortran_order": False, "shape": (3, 4)}'),
    _raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3,4), }"),
    _raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", version=(2, 0)),
    _raw_header("{'descr': [('a', '<i4'), ('b', '<f8')], 'fortran_order': False, 'shape': (2,), }"),
    _raw_header("{'descr': '<M8[ns]', 'fortran_order': False, 'shape': (2,), }"),
    _raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3), }"),
    _raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (03, 4), }"),
], ids=['key-order', 'double-quotes', 'no-space', 'version-2', 'structured', 'datetime', 'shape-no-tuple',
        'leading-zero'])
def test_headers_numpy_does_not_write_go_to_its_reader(raw, monkeypatch):
    """Any other header (other spellings, version 2.0, dtypes with brackets or fields, a shape numpy would not take for
    a tuple of ints) is parsed by numpy's reader, and gives what it gives (or raises what it raises)."""
    expected, calls = _header_or_error(_numpy_reads, raw), []
    for name in ('read_array_header_1_0', 'read_array_header_2_0'):
        original = getattr(npy_format, name)
        monkeypatch.setattr(npy_format, name, lambda *args, _read=original, **kwargs: calls.append(1) or
                            _read(*args, **kwargs))
    npz.clear_caches()
    assert _header_or_error(npz._npy_header, raw) == expected
    assert calls == [1]


_SIZES = st.sampled_from(['0', '1', '3', '12', '256', '123456789012', '00', '03', '-1', '1_0', ' 4'])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(descr=st.sampled_from(['<f4', '>f8', '|b1', '<U29', '|O', '=i2', 'f4', '<q9', '<M8[ns]', '']),
       fortran=st.sampled_from(['False', 'True', 'false', '0']),
       sizes=st.lists(_SIZES, max_size=4), separator=st.sampled_from([', ', ',', ' , ']),
       trailing=st.sampled_from(['', ',', ', ']), pad=st.sampled_from([16, 64, 256]))
def test_any_header_reads_as_numpy_reads_it(descr, fortran, sizes, separator, trailing, pad):
    """Headers around numpy's own layout (other sizes' spellings, separators, trailing commas, padding, dtypes numpy
    does not know): the values numpy's reader gives, or its error, whether or not the pattern takes the header."""
    raw = _raw_header(f"{{'descr': '{descr}', 'fortran_order': {fortran}, "
                      f"'shape': ({separator.join(sizes)}{trailing}), }}", pad=pad)
    npz.clear_caches()
    assert _header_or_error(npz._npy_header, raw) == _header_or_error(_numpy_reads, raw)


def test_a_header_in_numpys_layout_with_values_it_refuses_is_refused():
    """Recognised by its layout but no dtype numpy knows: numpy's own error, as `np.load` raises it."""
    raw = _raw_header("{'descr': '<q9', 'fortran_order': False, 'shape': (3, 4), }")
    with pytest.raises(ValueError, match=r"descr is not a valid dtype descriptor: '<q9'"):
        _numpy_reads(raw)
    npz.clear_caches()
    with pytest.raises(ValueError, match=r"descr is not a valid dtype descriptor: '<q9'"):
        npz._npy_header(raw)
    spaced = _raw_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3 4), }")  # no Python literal
    with pytest.raises(ValueError, match=r"Cannot parse header"):
        npz._npy_header(spaced)


@pytest.mark.parametrize('length, words', [
    (2 ** 62, 'it asks for more memory than there is'),  # MemoryError from pickle
    (2 ** 64 - 1, "BINBYTES exceeds system's maximum size"),  # OverflowError from pickle
], ids=['memory', 'overflow'])
def test_a_pickle_asking_for_huge_bytes_refused(tmp_path, length, words):
    path = _save(tmp_path, 'cache-file-2d')
    raw = bytearray(path.read_bytes())
    start = _member_data(path, 'specs.npy')
    pickled = start + 10 + int.from_bytes(raw[start + 8:start + 10], 'little')  # after the .npy header
    memo = raw.index(b'\x94', pickled + 2)  # a MEMOIZE opcode becomes BINBYTES8 with the given length
    raw[memo:memo + 9] = b'\x8e' + length.to_bytes(8, 'little')
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError) as info:
        read_phiml_npz(path)
    assert str(info.value).startswith(f"{path}: refused to unpickle member 'specs.npy': {words}")


def test_missing_meta_member_refused(tmp_path):
    path = tmp_path / 'plain.npz'
    np.savez(path, a=np.arange(3))
    with pytest.raises(CacheError, match="not a phiml.math.save file \\(member 'tree' missing\\)"):
        read_phiml_npz(path)


def test_meta_member_that_is_not_an_npy_refused(tmp_path):
    source, path = _save(tmp_path, 'cache-file-2d'), tmp_path / 'raw-tree.npz'
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, 'w') as target:
        for info in original.infolist():
            target.writestr(info, b'not an npy' if info.filename == 'tree.npy' else original.read(info))
    with pytest.raises(CacheError, match=f"^{re.escape(str(path))}: member 'tree.npy' is not an .npy array$"):
        read_phiml_npz(path)
    with pytest.raises(AttributeError):  # stock: np.load gives the member's bytes, which have no .tolist()
        math.load(str(path))


def test_results_do_not_share_mutable_state(tmp_path):
    path = _save(tmp_path, 'cache-file-2d')
    first = read_phiml_npz(path)
    first['metadata']['fields'].append('changed')
    assert read_phiml_npz(path)['metadata']['fields'] == ['velocity']


def test_a_file_of_the_same_size_is_read_by_its_own_structure(tmp_path):
    """The sims of a cache share a layout (sizes, headers, zip directory, meta members): a later file is read by the
    remembered one only where every byte outside the arrays' data repeats, else parsed afresh."""
    manager = PhiMLDataManager(tmp_path)
    for sim, scenario in enumerate(('burgers', 'burgerz', 'burgers')):  # equal sizes; the pickled tree differs
        manager.save_cache(sim, {'velocity': _velocity(4, 5, seed=sim), 'metadata': {**_META, 'scenario': scenario}})
    paths = [manager.get_cached_path(sim) for sim in range(3)]
    assert len({p.stat().st_size for p in paths}) == 1
    npz.clear_caches()
    for path in paths:
        ours = read_phiml_npz(path)
        assert_same_as_stock(ours, math.load(str(path)))
    assert [read_phiml_npz(p)['metadata']['scenario'] for p in paths] == ['burgers', 'burgerz', 'burgers']
    assert len(npz._LAYOUTS[paths[0].stat().st_size]) == 2


def _moved_inside(path, moved: str, into: str):
    """Rewrites `path` so that member `moved` (a copy of its local header and data) lies inside the data of member
    `into`, and the zip directory points there: two members whose data overlap."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        entries = dict(zip([i.filename for i in infos], npz.directory_offsets(archive)))
    ends = {info.filename: (infos[k + 1].header_offset if k + 1 < len(infos) else archive.start_dir)
            for k, info in enumerate(infos)}
    source = {i.filename: i for i in infos}[moved]
    copy = data[source.header_offset:ends[moved]]
    offset = ends[into] - len(copy) - 64  # inside the data of `into`, past its headers
    data[offset:offset + len(copy)] = copy
    data[entries[moved] + 42:entries[moved] + 46] = offset.to_bytes(4, 'little')  # the directory's local header offset
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo(moved).header_offset == offset  # the file is crafted as meant
    return path


@pytest.mark.parametrize('moved, words', [
    ('root[metadata][seed]:0.npy', "member 'root[metadata][seed]:0.npy': its data overlaps another member's"),
    ('root[density]:0.npy', "the data of two large array members overlap"),
], ids=['small-in-large', 'large-in-large'])
def test_members_whose_data_overlap_refused(tmp_path, moved, words):
    path = tmp_path / 'overlap.npz'
    math.save(str(path), {'velocity': _velocity(32, 32), 'density': _scalar(32, 32), 'metadata': dict(_META)})
    _moved_inside(path, moved, 'root[velocity]:0.npy')
    before = path.read_bytes()
    with pytest.raises(CacheError) as info:
        read_phiml_npz(path)
    assert str(info.value) == f"{path}: {words}"
    assert path.read_bytes() == before


# --- every refusal names its cause; files crafted from a stock-saved one with zipfile, numpy and pickle -------------

def _stock_members(tmp_path) -> list[tuple[str, bytes]]:
    """The members (name, stored bytes) of a small file saved by stock `phiml.math.save`, in archive order."""
    source = tmp_path / 'source.npz'
    math.save(str(source), {'velocity': _velocity(4, 5), 'metadata': {'dt': 0.01, 'n_frames': 3, 'fields': ['velocity']}})
    with zipfile.ZipFile(source) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(path, members) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # zipfile warns of a repeated name
        with zipfile.ZipFile(path, 'w') as archive:
            for name, content in members:
                archive.writestr(name, content)
    return path.read_bytes()


def _replaced(members, name: str, content: bytes):
    return [(n, content if n == name else c) for n, c in members]


def _npy(value, version=(1, 0)) -> bytes:
    out = io.BytesIO()
    npy_format.write_array(out, np.asarray(value), version=version, allow_pickle=True)
    return out.getvalue()


def _header_length(member: bytes) -> int:
    """Bytes of the magic, length field and header of a 1.0 `.npy` member."""
    return 10 + int.from_bytes(member[8:10], 'little')


def _padded_header(member: bytes, length: int) -> bytes:
    """The 1.0 `.npy` member with its header padded with spaces to `length` bytes (numpy reads any such header)."""
    text = member[10:_header_length(member)].rstrip(b' \n')
    return member[:8] + length.to_bytes(2, 'little') + text.ljust(length - 1) + b'\n' + member[_header_length(member):]


_VELOCITY, _DT = 'root[velocity]:0.npy', 'root[metadata][dt]:0.npy'
_NO_LAYOUT_SHAPE = {'tree': {'velocity': None, 'names': {'__layout__': 1, 'obj': ['a', 'b']}}}


@pytest.mark.parametrize('craft, words', [
    (lambda m: m + [('tree', m[0][1])], "member name 'tree' repeats (after dropping '.npy')"),
    (lambda m: _replaced(m, _VELOCITY, dict(m)[_VELOCITY].replace(b'(3, 4, 5, 2)', b'(3, 4, 5, 3)', 1)),
     "member 'root[velocity]:0.npy' holds 480 bytes of data, its header announces 720 (truncated or corrupt)"),
    (lambda m: _replaced(m, _DT, dict(m)[_DT][:40]),
     "member 'root[metadata][dt]:0.npy': its .npy header (128 bytes) is longer than the member (40 bytes)"),
    (lambda m: _replaced(m, _DT, _npy(0.01, version=(3, 0))),
     "not a readable .npz file (.npy format version (3, 0), expected 1.0 or 2.0)"),
    (lambda m: _replaced(m, 'specs.npy', _npy(np.asarray([{'names': ()}] * 3, dtype=object))),
     "malformed tensor specs, paths or tree (KeyError: 'type')"),
    (lambda m: [(n, c) for n, c in m if n != 'root[metadata][n_frames]:0.npy'], "3 tensors but only 2 array members"),
    (lambda m: _replaced(m, 'tree.npy', dict(m)['tree.npy'][:_header_length(dict(m)['tree.npy'])]
                         + pickle.dumps({'tree': None}, protocol=3)),
     "refused to unpickle member 'tree.npy': the pickle holds a dict, expected an object array; a cache may hold only "
     "tensors and plain containers (dict, list, str, numbers)"),
    (lambda m: _replaced(m, 'tree.npy', _npy(np.asarray(_NO_LAYOUT_SHAPE, dtype=object))),
     "its members do not assemble into a tree (KeyError: 'stack_dim')"),
], ids=['repeated-name', 'data-short-of-header', 'member-short-of-header', 'npy-3.0', 'malformed-specs',
        'member-missing', 'pickle-not-an-array', 'layout-without-shape'])
def test_each_malformed_file_refused_naming_its_cause(tmp_path, craft, words):
    path = tmp_path / 'crafted.npz'
    before = _zip(path, craft(_stock_members(tmp_path)))
    for mmap in (False, True):
        npz.clear_caches()
        with pytest.raises(CacheError) as info:
            read_phiml_npz(path, mmap=mmap)
        assert str(info.value) == f"{path}: {words}"
    assert path.read_bytes() == before


def test_a_local_header_that_differs_from_the_directory_refused(tmp_path):
    """The name in a member's local header must be the directory's (zipfile's own check when it opens a member)."""
    path = tmp_path / 'renamed.npz'
    raw = bytearray(_zip(path, _stock_members(tmp_path)))
    at = raw.index(b'paths.npy')  # the first occurrence: in the local header, not in the directory's entry
    raw[at:at + 5] = b'PATHS'
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError) as info:
        read_phiml_npz(path)
    assert str(info.value) == f"{path}: member 'paths.npy': its local header does not match the zip directory (or it is encrypted)"
    with pytest.raises(zipfile.BadZipFile, match="File name in directory 'paths.npy' and header b'PATHS.npy' differ"):
        math.load(str(path))


@pytest.mark.parametrize('member', ['specs.npy', _VELOCITY, _DT])
def test_a_header_longer_than_the_first_read_read_as_stock_reads_it(tmp_path, member):
    members = _stock_members(tmp_path)
    path = tmp_path / 'long-header.npz'
    _zip(path, _replaced(members, member, _padded_header(dict(members)[member], 2 * npz.HEAD + 64)))
    for mmap in (False, True):
        npz.clear_caches()
        for _ in range(2):  # parsed, then read by the layout remembered
            assert_same_as_stock(read_phiml_npz(path, mmap=mmap), math.load(str(path)))


_LEAVES = st.one_of(st.none(), st.sampled_from(['__native__', '__missing__', 'text', '']), st.integers(), st.floats(),
                    st.booleans(), st.binary(max_size=3))
_TREES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.dictionaries(st.text('ab[]._', max_size=3), inner, max_size=3),
    inner.map(lambda obj: {'__layout__': 1, 'stack_dim': {}, 'obj': obj})), max_leaves=12)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_TREES)
def test_tensor_paths_are_phimls_for_every_tree_the_reader_admits(tree):
    """The paths of a tree's tensors, which decide which stored tensor each leaf takes, are phiml's own."""
    from phiml.math._tree import all_attributes, attr_paths_from_container
    assert npz._leaf_paths(tree, 'root') == attr_paths_from_container(tree, all_attributes, 'root')
