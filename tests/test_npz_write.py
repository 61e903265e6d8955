"""The `.npz` writer: member for member what `phiml.math.save` writes, read back by `phiml.math.load` and our reader."""
import io
import zipfile

import numpy as np
import pytest
from phiml import math
from phiml.math import batch, channel, spatial
from phiml.math._tree import disassemble_tree

import phiml_native.npz_write as npz_write
from phiml_native import read_phiml_npz
from phiml_native.npz_write import write_phiml_npz


def _field(seed: int = 0, size: int = 64):
    values = np.random.default_rng(seed).standard_normal((5, size, size, 2)).astype(np.float32)
    return math.wrap(values, batch('time'), spatial('x,y'), channel(vector='x,y'))


def _cache_like():
    return {'velocity': _field(), 'metadata': {'scenario': 'burgers', 'sim_index': 3, 'seed': 7, 'resolution': [64, 64],
                                               'dt': 0.5, 'viscosity': np.float32(0.1), 'n_frames': 5,
                                               'fields': ['velocity'], 'note': None, 'flag': True,
                                               'pair': (1, 'a'), 'größe': 2.5}}


def _members(path):
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every CRC checks out
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


@pytest.mark.parametrize('make, fast', [
    (_cache_like, True),
    (lambda: _field(1, 8), True),  # a bare tensor
    (lambda: [math.stack([_field(3, 4), _field(4, 4)], batch('b')), 'text', None], True),
    (lambda: {'a': _field(2, 4), 'native': np.arange(6).reshape(2, 3), 'shape': spatial(x=3)}, False),
], ids=['cache', 'tensor', 'stack-list', 'native-array-and-shape'])
def test_members_are_those_phiml_save_writes(make, fast, tmp_path, monkeypatch):
    obj = make()
    math.save(str(tmp_path / 'phiml.npz'), obj)
    disassembled = []
    monkeypatch.setattr(npz_write, 'disassemble_tree', lambda *args: disassembled.append(1) or disassemble_tree(*args))
    write_phiml_npz(tmp_path / 'ours.npz', obj)
    assert _members(tmp_path / 'ours.npz') == _members(tmp_path / 'phiml.npz')
    assert bool(disassembled) != fast  # what the fast split does not cover goes through phiml's own


def test_read_back_by_phiml_load_and_our_reader(tmp_path):
    """Ours read by both readers, and caches written by `phiml.math.save` before (ZIP64 extras) by ours."""
    obj = _cache_like()
    write_phiml_npz(tmp_path / 'sim.npz', obj)
    math.save(str(tmp_path / 'phiml.npz'), obj)
    for loaded in (math.load(str(tmp_path / 'sim.npz')), read_phiml_npz(tmp_path / 'sim.npz'),
                   read_phiml_npz(tmp_path / 'phiml.npz')):
        assert loaded['velocity'].shape == obj['velocity'].shape
        assert np.array_equal(loaded['velocity'].numpy('time,x,y,vector'), obj['velocity'].numpy('time,x,y,vector'))
        assert loaded['metadata'] == obj['metadata']


def test_equal_data_gives_equal_bytes(tmp_path):
    write_phiml_npz(tmp_path / 'a.npz', _cache_like())
    write_phiml_npz(tmp_path / 'b.npz', _cache_like())
    assert (tmp_path / 'a.npz').read_bytes() == (tmp_path / 'b.npz').read_bytes()


def test_large_arrays_written_from_their_memory_small_ones_inline():
    large, small = np.zeros((64, 64, 16), np.float32), np.arange(3)
    head, data = npz_write._member(large)
    assert isinstance(data, memoryview) and np.shares_memory(np.frombuffer(data, np.float32), large)
    assert head + bytes(data) == _npy_bytes(large)
    assert npz_write._member(small) == (b'', _npy_bytes(small))


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()
