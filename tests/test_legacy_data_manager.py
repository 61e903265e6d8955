import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from harness.errors import CacheError
from legacy import DataManager, LegacyPipeline, phiml_to_torch, torch_to_phiml

# then torch's own words (cut short by the loader) on what it would have had to import
REFUSED = ("refused to load, the file holds objects other than tensors, plain containers and numpy values "
           "(WeightsUnpickler error: Unsupported global: GLOBAL {} was not an allowed global by default.")


class _Payload:
    """Pickles as `open(marker, 'w')`: if a load ever runs it, `marker` exists."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_round_trip(cache_dirs, tiny_sim, tiny_config):
    data = DataManager(cache_dirs['legacy']).load_cache(1)
    tensor = data['tensor_data']['velocity']
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (2, tiny_config.sim.n_frames, 16, 16)
    assert data['metadata']['sim_index'] == 1
    assert data['metadata']['field_channels'] == {'velocity': ['x', 'y']}
    assert data['metadata']['spatial_dims'] == ['x', 'y']
    assert data['metadata']['seed'] == tiny_config.seed
    source = tiny_sim.sim_fields(1)['velocity'].values.native(['vector', 'time', 'x', 'y'])
    assert torch.equal(tensor, source)


def test_layout_mapping(cache_dirs, tiny_sim):
    """tensor[c, t, i, j] == values[vector=c, time=t, x=i, y=j] (H is x, W is y)."""
    tensor = DataManager(cache_dirs['legacy']).load_cache(2)['tensor_data']['velocity']
    values = tiny_sim.sim_fields(2)['velocity'].values
    for c, t, i, j in [(0, 0, 0, 0), (1, 3, 5, 11), (0, 8, 15, 2), (1, 1, 2, 15)]:
        expected = values[{'vector': c, 'time': t, 'x': i, 'y': j}].native()
        assert tensor[c, t, i, j].item() == expected.item()
    # x and y are distinguishable: the layout is not accidentally symmetric
    assert not torch.equal(tensor, tensor.transpose(2, 3))


def test_cached_path():
    assert DataManager('somewhere').get_cached_path(12).name == 'sim_000012.pt'


def test_conversion_round_trip():
    raw = torch.arange(2 * 3 * 2 * 4 * 5, dtype=torch.float32).reshape(2, 3, 2, 4, 5)
    t = torch_to_phiml(raw, ('x', 'y'), ['x', 'y'], has_time=True)
    assert t.shape.names == ('batch', 'time', 'x', 'y', 'vector')
    assert t[{'batch': 1, 'time': 2, 'vector': 1, 'x': 3, 'y': 4}].native().item() == raw[1, 2, 1, 3, 4].item()
    assert torch.equal(phiml_to_torch(t, has_time=True), raw)


def _broken_copy(cache_dirs, tmp_path, mutate):
    target = tmp_path / 'legacy'
    shutil.copytree(cache_dirs['legacy'], target)
    path = target / 'sim_000000.pt'
    data = torch.load(path, weights_only=True)
    mutate(data)
    torch.save(data, path)
    return target, path


@pytest.mark.parametrize('mutate, words', [
    (lambda d: d['tensor_data'].pop('velocity'),
     "metadata field_channels names the fields ['velocity'], tensor_data holds []"),
    (lambda d: d['metadata'].update(n_frames=99), "metadata n_frames=99, the tensors hold T=9 frames"),
    (lambda d: d.pop('metadata'), "expected a dict with keys 'tensor_data' and 'metadata'"),
    (lambda d: d['tensor_data'].update(velocity=d['tensor_data']['velocity'].transpose(0, 1).contiguous()),
     "metadata n_frames=9, the tensors hold T=2 frames"),
    (lambda d: d['tensor_data'].update(velocity=d['tensor_data']['velocity'][0]),
     "metadata n_frames=9, the tensors hold T=16 frames"),
    (lambda d: d['tensor_data'].update(velocity=d['tensor_data']['velocity'].double()), "dtype torch.float64"),
], ids=['missing-field', 'wrong-n-frames', 'no-metadata', 'time-first', 'no-channel', 'float64'])
def test_bad_cache_refused(cache_dirs, tmp_path, tiny_config, mutate, words):
    folder, path = _broken_copy(cache_dirs, tmp_path, mutate)
    pipeline = LegacyPipeline(folder, tiny_config.data.rollout_steps)
    with pytest.raises(CacheError) as info:
        pipeline.open([0, 1])
    assert str(path) in str(info.value) and words in str(info.value)


def test_missing_and_garbage_files(cache_dirs, tmp_path):
    manager = DataManager(tmp_path)
    with pytest.raises(CacheError, match='sim_000004.pt: cache file missing'):
        manager.load_cache(4)
    (tmp_path / 'sim_000004.pt').write_bytes(b'not a torch file')
    with pytest.raises(CacheError) as info:
        manager.load_cache(4)
    assert str(info.value) == (f"{tmp_path / 'sim_000004.pt'}: not a readable torch file (expected the zip archive "
                               f"that torch.save writes, or its format before torch 1.6; 16 bytes, empty or truncated?)")


def test_the_format_before_torch_1_6_is_read(tmp_path):
    """`torch.save(..., _use_new_zipfile_serialization=False)`: the format of caches written before torch 1.6."""
    velocity = torch.arange(2 * 5 * 4 * 3, dtype=torch.float32).reshape(2, 5, 4, 3)
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': velocity}, 'metadata': {'dt': np.float32(0.5), 'note': 'old'}}, path,
               _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    data, layout = DataManager(tmp_path).load(0)
    assert torch.equal(data['tensor_data']['velocity'], velocity) and data['metadata'] == {'dt': 0.5, 'note': 'old'}
    assert (layout.n_frames, layout.resolution, layout.channels) == (5, (4, 3), {'velocity': ('x', 'y')})


def test_a_crafted_file_in_the_format_before_torch_1_6_is_refused_unrun(tmp_path):
    marker = tmp_path / 'pwned'

    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {}, 'metadata': {'x': _Payload(marker)}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{path}: {REFUSED.format('io.open')}")
    assert not marker.exists()


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'before torch 1.6'])
def test_every_truncation_of_a_file_is_refused_with_a_cache_error(tmp_path, zip_format):
    """Cut anywhere, a file never loads and never escapes as another exception (torch's unpickler raises IndexError,
    struct.error, ... on a pickle cut short); nothing else is written."""
    source = tmp_path / 'source.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {'dt': np.float32(0.5)}}, source,
               _use_new_zipfile_serialization=zip_format)
    raw, folder = source.read_bytes(), tmp_path / 'cache'
    folder.mkdir()
    for size in range(len(raw)):
        (folder / 'sim_000000.pt').write_bytes(raw[:size])
        with pytest.raises(CacheError, match=r'^' + re.escape(f"{folder / 'sim_000000.pt'}: ")):
            DataManager(folder).load_cache(0)
    assert sorted(p.name for p in folder.iterdir()) == ['sim_000000.pt']


def test_a_pickle_cut_short_is_named_so(tmp_path):
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {}}, path,
               _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    for size, reason in ((14, 'EOFError'), (16, 'IndexError: index out of range')):  # after the magic number
        path.write_bytes(raw[:size])
        with pytest.raises(CacheError) as info:
            DataManager(tmp_path).load_cache(0)
        assert str(info.value) == f"{path}: not a readable torch file (cut short or corrupt: {reason})"


def test_a_corrupt_pickle_in_a_zip_file_is_named_so(tmp_path):
    """One byte changed in the archive's pickle (torch checks no CRC): an encoding name numpy's scalar asks for."""
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {'dt': np.float32(0.5)}}, path)
    raw = path.read_bytes()
    assert raw.count(b'latin1') == 1
    path.write_bytes(raw.replace(b'latin1', b'latmn1'))
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value) == f"{path}: not a readable torch file (cut short or corrupt: LookupError: unknown encoding: latmn1)"


def test_unsafe_payload_not_executed(tmp_path):
    marker = tmp_path / 'pwned'

    torch.save({'tensor_data': {}, 'metadata': _Payload(marker)}, tmp_path / 'sim_000000.pt')
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{tmp_path / 'sim_000000.pt'}: {REFUSED.format('io.open')}")
    assert not marker.exists()


def test_unsafe_payload_in_tensor_data_not_executed(tmp_path):
    marker = tmp_path / 'pwned'

    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': _Payload(marker)}, 'metadata': {}}, path)
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{path}: {REFUSED.format('io.open')}")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unrestricted load runs it
    assert marker.exists()


def test_saved_bytes_are_reproducible(cache_dirs, tmp_path):
    """Equal data gives equal bytes (the archive is not named after the random temporary file)."""
    data = DataManager(cache_dirs['legacy']).load_cache(1)
    for folder in ('a', 'b'):
        DataManager(tmp_path / folder).save_cache(1, data['tensor_data'], data['metadata'])
    assert (tmp_path / 'a' / 'sim_000001.pt').read_bytes() == (tmp_path / 'b' / 'sim_000001.pt').read_bytes()


def test_any_float_only_when_asked(cache_dirs, tmp_path):
    data = DataManager(cache_dirs['legacy']).load_cache(0)
    DataManager(tmp_path).save_cache(0, {'velocity': data['tensor_data']['velocity'].double()}, data['metadata'])
    with pytest.raises(CacheError, match='dtype torch.float64, expected torch.float32'):
        DataManager(tmp_path).load_cache(0)
    assert DataManager(tmp_path).load_cache(0, allow_any_float=True)['tensor_data']['velocity'].dtype == torch.float64


def _numpy_1_spelling(save, value=np.float64(0)):
    """Runs `save` with numpy's reconstruction of `value` (a scalar's `scalar`, an array's `_reconstruct`) pickled as
    numpy 1 names it (`numpy.core.multiarray.*`)."""
    reconstruct = value.__reduce__()[0]
    module, reconstruct.__module__ = reconstruct.__module__, 'numpy.core.multiarray'
    try:
        save()
    finally:
        reconstruct.__module__ = module


@pytest.mark.parametrize('spelling', ['numpy 2', 'numpy 1'])
def test_numpy_scalars_in_metadata_are_read_as_the_python_values_they_hold(tmp_path, spelling):
    meta = {'dt': np.float32(0.01), 'Re': np.float64(180.0), 'run': np.int64(3), 'level': np.uint8(7),
            'half': np.float16(0.5), 'ok': np.bool_(True), 'sizes': [np.int32(24), 16], 'solver': {'tol': np.float64(1e-6)},
            'pair': (np.int16(-2), 'a'), 'case': 'channel-flow'}
    path = tmp_path / 'sim_000000.pt'
    save = lambda: torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': meta}, path)
    _numpy_1_spelling(save) if spelling == 'numpy 1' else save()
    assert (b'numpy.core.multiarray' in path.read_bytes()) == (spelling == 'numpy 1')
    loaded = DataManager(tmp_path).load_cache(0)['metadata']
    expected = {'dt': 0.009999999776482582, 'Re': 180.0, 'run': 3, 'level': 7, 'half': 0.5, 'ok': True, 'sizes': [24, 16],
                'solver': {'tol': 1e-6}, 'pair': (-2, 'a'), 'case': 'channel-flow'}
    assert loaded == expected
    types = lambda v: {k: types(x) for k, x in v.items()} if isinstance(v, dict) else \
        [types(x) for x in v] if isinstance(v, (list, tuple)) else type(v)
    assert types(loaded) == types(expected)


@pytest.mark.parametrize('spelling', ['numpy 2', 'numpy 1'])
def test_numpy_arrays_in_metadata_are_read_as_nested_lists(tmp_path, spelling):
    meta = {'grid': np.array([64, 32]), 'extent': np.array([[0.0, 1.0], [0.0, 0.5]], np.float32),
            'mask': np.array([True, False]), 'n_frames': np.array(5), 'spatial_dims': np.array(['x', 'y']),
            'fortran': np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3))}
    path = tmp_path / 'sim_000000.pt'
    save = lambda: torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': meta}, path)
    _numpy_1_spelling(save, np.zeros(0)) if spelling == 'numpy 1' else save()
    assert (b'numpy.core.multiarray\n_reconstruct' in path.read_bytes()) == (spelling == 'numpy 1')
    data, layout = DataManager(tmp_path).load(0)
    expected = {'grid': [64, 32], 'extent': [[0.0, 1.0], [0.0, 0.5]], 'mask': [True, False], 'n_frames': 5,
                'spatial_dims': ['x', 'y'], 'fortran': [[0, 1, 2], [3, 4, 5]]}
    assert data['metadata'] == expected
    leaves = lambda v: [y for x in v for y in leaves(x)] if isinstance(v, list) else [type(v)]
    assert {key: set(leaves(value)) for key, value in data['metadata'].items()} == {
        'grid': {int}, 'extent': {float}, 'mask': {bool}, 'n_frames': {int}, 'spatial_dims': {str}, 'fortran': {int}}
    assert (layout.n_frames, layout.spatial_dims) == (5, ('x', 'y'))  # the hints as arrays are checked like lists


def test_torch_tensors_in_metadata_are_read_as_the_python_values_they_hold(tmp_path):
    meta = {'dt': torch.tensor(0.01), 'grid': torch.tensor([64, 32]), 'n_frames': torch.tensor(5),
            'mask': torch.tensor([[True], [False]]), 'solver': {'tol': torch.tensor(1e-6, dtype=torch.float64)}}
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': meta}, path)
    data, layout = DataManager(tmp_path).load(0)
    assert data['metadata'] == {'dt': 0.009999999776482582, 'grid': [64, 32], 'n_frames': 5, 'mask': [[True], [False]],
                                'solver': {'tol': 1e-6}}
    assert [type(data['metadata'][k]) for k in ('dt', 'n_frames')] == [float, int]
    assert type(data['metadata']['mask'][1][0]) is bool and type(data['metadata']['solver']['tol']) is float
    assert isinstance(data['tensor_data']['velocity'], torch.Tensor)  # only the metadata is turned into Python values
    assert layout.n_frames == 5


def test_a_sparse_tensor_in_metadata_is_refused(tmp_path):
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {'mask': torch.eye(2).to_sparse()}},
               path)
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value) == (f"{path}: metadata holds a tensor without plain values (Cannot access data pointer of "
                               f"Tensor that doesn't have storage); expected numbers, strings, lists, dense tensors or "
                               f"numpy values")


def test_numpy_array_hints_that_disagree_with_the_tensors_are_named(tmp_path):
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {'n_frames': np.array(7)}}, path)
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value) == f"{path}: metadata n_frames=7, the tensors hold T=5 frames"


def test_numpy_object_arrays_in_metadata_are_refused(tmp_path):
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {'tags': np.array([1, 'a'], object)}},
               path)
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{path}: refused to load, the file holds objects other than tensors, plain "
                                      f"containers and numpy values (WeightsUnpickler error: Can only build Tensor, "
                                      f"Parameter, OrderedDict or types allowlisted via `add_safe_globals`, but got "
                                      f"<class 'numpy.dtypes.ObjectDType'>)")


def test_empty_numpy_arrays_in_metadata_are_refused(tmp_path):
    """torch pickles an empty array's data as `bytes()`, a call of `bytes` not admitted (it could allocate any size)."""
    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {'velocity': torch.zeros(2, 5, 4, 4)}, 'metadata': {'probes': np.zeros(0)}}, path)
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{path}: {REFUSED.format('bytes')}")


def test_a_numpy_array_cannot_carry_a_payload(tmp_path):
    """numpy's array reconstruction is admitted, not what its state unpickles to."""
    marker = tmp_path / 'pwned'

    class Array:
        def __reduce__(self):
            reconstruct, args, state = np.zeros(2).__reduce__()
            return (reconstruct, args, (*state[:4], _Payload(marker)))

    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {}, 'metadata': {'grid': Array()}}, path)
    assert b'numpy._core.multiarray\n_reconstruct' in path.read_bytes()
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{path}: {REFUSED.format('io.open')}")
    assert not marker.exists()


def test_a_numpy_scalar_cannot_carry_a_payload(tmp_path):
    """numpy's scalar reconstruction is admitted, not what its arguments unpickle to."""
    marker = tmp_path / 'pwned'

    class Scalar:
        def __reduce__(self):
            return (np.float64(0).__reduce__()[0], (np.dtype('f8'), _Payload(marker)))

    path = tmp_path / 'sim_000000.pt'
    torch.save({'tensor_data': {}, 'metadata': {'dt': Scalar()}}, path)
    assert b'numpy._core.multiarray\nscalar' in path.read_bytes()
    with pytest.raises(CacheError) as info:
        DataManager(tmp_path).load_cache(0)
    assert str(info.value).startswith(f"{path}: {REFUSED.format('io.open')}")
    assert not marker.exists()
