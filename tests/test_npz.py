"""The fast `.npz` reader: layouts parsed once and reused only for byte-identical structure, fallbacks, caches."""
import shutil
import zipfile

import numpy as np
import pytest
from phiml import math
from phiml.math import batch, channel, spatial

import phiml_native.npz as npz
from harness.errors import CacheError
from phiml_native import PhiMLDataManager, read_phiml_npz
from phiml_native.tensors import dense, shape_of
from phiml_native.zipdir import read_directory


@pytest.fixture
def parses(monkeypatch):
    """Counts full parses of a file layout; starts with empty caches."""
    npz.clear_caches()
    calls = []
    original = npz.parse_layout

    def counting(*args):
        calls.append(args[0])
        return original(*args)

    monkeypatch.setattr(npz, 'parse_layout', counting)
    yield calls
    npz.clear_caches()


def _same(a, b):
    assert a.shape == b.shape and a.shape.names == b.shape.names
    assert np.array_equal(a.numpy(a.shape.names), b.numpy(a.shape.names))


def test_every_sim_equals_phiml_load_and_one_layout_serves_all(cache_dirs, tiny_config, parses):
    manager = PhiMLDataManager(cache_dirs['phiml'])
    for sim in tiny_config.all_sims:
        path = manager.get_cached_path(sim)
        ours, theirs = read_phiml_npz(path), math.load(str(path))
        _same(ours['velocity'], theirs['velocity'])
        assert ours['metadata'] == theirs['metadata'] and ours['metadata']['sim_index'] == sim
    assert len(parses) == 1  # the other sims differ only in data, timestamps and CRCs


def test_changed_structure_of_same_size_is_parsed_again(cache_dirs, tmp_path, parses):
    path = tmp_path / 'sim.npz'
    shutil.copy(PhiMLDataManager(cache_dirs['phiml']).get_cached_path(0), path)
    assert read_phiml_npz(path)['velocity'].shape.sizes == (9, 16, 16, 2)
    data = bytearray(path.read_bytes())
    at = data.index(b"'shape': (9, 16, 16, 2)")
    data[at:at + 23] = b"'shape': (9, 16, 32, 1)"  # same size and byte count: only a header byte differs
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"tensor 'root\[velocity\]' does not match its spec"):
        read_phiml_npz(path)  # a stale layout would have served the old shape
    assert len(parses) == 2


def test_changed_metadata_text_is_seen(tmp_path, parses):
    values = math.wrap(np.arange(24, dtype=np.float32).reshape(2, 3, 4), batch('time'), spatial('x'), channel('c'))
    for name in ('aaaa', 'bbbb'):
        math.save(str(tmp_path / f'{name}.npz'), {'v': values, 'metadata': {'scenario': name}})
    assert (tmp_path / 'aaaa.npz').stat().st_size == (tmp_path / 'bbbb.npz').stat().st_size
    assert read_phiml_npz(tmp_path / 'aaaa.npz')['metadata'] == {'scenario': 'aaaa'}
    assert read_phiml_npz(tmp_path / 'bbbb.npz')['metadata'] == {'scenario': 'bbbb'}
    assert len(parses) == 2


def test_compressed_archive_read_through_zipfile(cache_dirs, tmp_path):
    source = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(1)
    target = tmp_path / 'compressed.npz'
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with open(target, 'rb') as fp:
        assert read_directory(fp) is None
    ours, theirs = read_phiml_npz(target), math.load(str(source))
    _same(ours['velocity'], theirs['velocity'])
    assert ours['metadata'] == theirs['metadata']


def test_directory_matches_zipfile(cache_dirs):
    path = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(0)
    with open(path, 'rb') as fp:
        directory = read_directory(fp)
    with zipfile.ZipFile(path) as zf:
        expected = [(i.filename, i.header_offset, i.compress_type, i.file_size) for i in zf.infolist()]
    assert [entry[:4] for entry in directory.entries] == expected
    assert directory.file_size == path.stat().st_size


def test_mmap_views_large_arrays_and_copies_small_ones(cache_dirs):
    path = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(2)
    data = read_phiml_npz(path, mmap=True)
    velocity = data['velocity'].numpy(data['velocity'].shape.names)
    assert not velocity.flags.writeable and not velocity.flags.owndata  # a view into the mapped file
    assert isinstance(data['metadata']['n_frames'], int)
    _same(data['velocity'], read_phiml_npz(path)['velocity'])


def test_crafted_pickle_refused_even_with_a_known_layout(cache_dirs, tmp_path, parses):
    good = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(0)
    read_phiml_npz(good)
    path = tmp_path / 'sim.npz'
    data = bytearray(good.read_bytes())
    at = data.index(b'numpy._core.multiarray')  # the tree pickle's one global, renamed to a forbidden one, same size
    data[at:at + 22] = b'os\npopen\n' + b' ' * 13
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match='refused to unpickle|not a readable'):
        read_phiml_npz(path)
    assert len(parses) == 2


def test_truncated_member_refused(cache_dirs, tmp_path):
    data = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(0).read_bytes()
    path = tmp_path / 'sim.npz'
    path.write_bytes(data[:3000] + data[-2000:])
    with pytest.raises(CacheError, match=str(path)):
        read_phiml_npz(path)


def test_clear_caches_forgets_layouts(cache_dirs, parses):
    path = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(0)
    read_phiml_npz(path)
    read_phiml_npz(path)
    npz.clear_caches()
    read_phiml_npz(path)
    assert len(parses) == 2


def test_dense_is_what_math_wrap_builds():
    import torch
    native = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    shape = shape_of((('batch', 'batch', 2), ('x', 'spatial', 3), ('vector', 'channel', ('x', 'y'))))
    ours, theirs = dense(native, shape), math.wrap(native, batch('batch'), spatial('x'), channel(vector='x,y'))
    assert type(ours) is type(theirs) and ours.shape == theirs.shape and ours.shape.names == theirs.shape.names
    assert ours.backend == theirs.backend and ours.native(ours.shape.names) is native
    with pytest.raises(ValueError, match=r'sizes \(2, 3, 2\) does not fit'):
        dense(native, shape_of((('batch', 'batch', 3), ('x', 'spatial', 3), ('vector', 'channel', ('x', 'y')))))



def test_out_may_be_a_callable_asked_once_per_large_member(cache_dirs, parses):
    path = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(1)
    asked, target = [], np.empty((9, 16, 16, 2), np.float32)

    def allocate(name, shape, dtype, offset):
        asked.append((name, shape, dtype, offset))
        return target

    data = read_phiml_npz(path, out=allocate)
    assert [ask[:3] for ask in asked] == [('root[velocity]:0', (9, 16, 16, 2), np.dtype('float32'))]
    assert np.shares_memory(data['velocity'].numpy('time,x,y,vector'), target)
    offset = asked[0][3]  # where the member's data lies in the file: for placing the array (phiml_native.aligned)
    assert path.read_bytes()[offset:offset + target.nbytes] == target.tobytes()
    _same(data['velocity'], read_phiml_npz(path)['velocity'])
    assert PhiMLDataManager(cache_dirs['phiml']).load_cache(1, out=lambda *args: None)['metadata'] == data['metadata']


def test_structure_read_with_two_reads_then_only_the_regions(cache_dirs, monkeypatch, parses):
    """A first file's structure comes from one read of its tail and one of its head; a file of a known layout from its
    structural regions; the field's data from one `readinto` either way."""
    calls = []

    class Counting:
        def __init__(self, fp):
            self.fp = fp

        def __getattr__(self, name):
            attribute = getattr(self.fp, name)
            if name in ('read', 'readinto'):
                return lambda *args: calls.append(name) or attribute(*args)
            return attribute

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fp.__exit__(*exc)

    monkeypatch.setattr(npz, 'open', lambda *args, **kwargs: Counting(open(*args, **kwargs)), raising=False)
    manager = PhiMLDataManager(cache_dirs['phiml'])
    read_phiml_npz(manager.get_cached_path(0))
    assert calls == ['read', 'read', 'readinto'] and len(parses) == 1
    calls.clear()
    read_phiml_npz(manager.get_cached_path(1))
    assert calls.count('read') <= 2 and calls.count('readinto') == 1 and len(parses) == 1


def test_reads_into_arrays_through_short_reads():
    """An unbuffered `readinto` is one system call, which may return less than asked (at most ~2 GiB on Linux)."""
    import io
    from phiml_native.npz_layout import _read_into

    class Trickle(io.BytesIO):
        def readinto(self, buffer):
            return super().readinto(memoryview(buffer)[:1000])

    data = np.arange(3000, dtype=np.float32)
    target = np.zeros_like(data)
    assert _read_into(Trickle(b'xx' + data.tobytes()), 2, memoryview(target).cast('B')) == data.nbytes
    assert np.array_equal(target, data)
    assert _read_into(Trickle(b'xx' + data.tobytes()[:100]), 2, memoryview(target).cast('B')) == 100  # file ends early
