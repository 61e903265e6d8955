import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from phiml import math
from phiml.math import batch, channel, dual, instance, spatial

from harness.errors import CacheError
from harness.plan import make_plan
from phiml_native import npz
from phiml_native import NativePipeline, PhiMLDataManager, read_phiml_npz


def test_round_trip(cache_dirs, tiny_sim, tiny_config):
    data = PhiMLDataManager(cache_dirs['phiml']).load_cache(1)
    v = data['velocity']
    assert v.shape.names == ('time', 'x', 'y', 'vector')
    assert [d.dim_type for d in v.shape] == [d.dim_type for d in (batch(time=1) & spatial(x=1, y=1) & channel(vector='x,y'))]
    assert v.shape.get_item_names('vector') == ('x', 'y')
    assert v.shape.sizes == (tiny_config.sim.n_frames, 16, 16, 2)
    assert v.dtype == math.DType(float, 32)
    source = tiny_sim.sim_fields(1)['velocity'].values.numpy(['time', 'x', 'y', 'vector'])
    assert np.array_equal(v.numpy(['time', 'x', 'y', 'vector']), source)
    assert data['metadata'] == tiny_sim.metadata(1)


def test_dim_types(cache_dirs):
    v = PhiMLDataManager(cache_dirs['phiml']).load_cache(0)['velocity']
    assert v.shape.batch.names == ('time',)
    assert v.shape.spatial.names == ('x', 'y')
    assert v.shape.channel.names == ('vector',)


def test_files_stay_readable_by_phiml_load(cache_dirs):
    path = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(0)
    by_phiml = math.load(str(path))
    ours = read_phiml_npz(path)
    assert by_phiml['velocity'].shape == ours['velocity'].shape
    assert np.array_equal(by_phiml['velocity'].numpy('time,x,y,vector'), ours['velocity'].numpy('time,x,y,vector'))
    assert by_phiml['metadata'] == ours['metadata']


def test_mmap_read_matches(cache_dirs):
    path = PhiMLDataManager(cache_dirs['phiml']).get_cached_path(2)
    a, b = read_phiml_npz(path), read_phiml_npz(path, mmap=True)
    assert np.array_equal(a['velocity'].numpy('time,x,y,vector'), b['velocity'].numpy('time,x,y,vector'))


def test_cached_path():
    assert PhiMLDataManager('somewhere').get_cached_path(7).name == 'sim_000007.npz'


def _without_fields(meta: dict) -> dict:
    return {key: value for key, value in meta.items() if key != 'fields'}


def test_without_the_fields_key_every_tensor_is_a_field(cache_dirs, tmp_path, tiny_config):
    """The migration plan's format, `{'velocity': Tensor, 'metadata': {...}}` with no 'fields' key (a team's own files,
    written here by stock `phiml.math.save`), opens like the harness's files and serves the same batches."""
    plain = tmp_path / 'plan-format'
    plain.mkdir()
    sims = [0, 1]
    for sim in sims:
        data = math.load(str(cache_dirs['phiml'] / f'sim_{sim:06d}.npz'))
        math.save(str(plain / f'sim_{sim:06d}.npz'), {**data, 'metadata': _without_fields(data['metadata'])})
    ours, theirs = (NativePipeline(folder, tiny_config.data.rollout_steps) for folder in (cache_dirs['phiml'], plain))
    for pipeline in (ours, theirs):
        pipeline.open(sims)
    fields, meta = theirs.read_fields(1)
    assert list(fields) == ['velocity'] and meta == _without_fields(ours.read_fields(1)[1])
    plan = make_plan(ours.window_keys(), 3, seed=0, epoch=0)
    for a, b in zip(ours.load_batches(plan), theirs.load_batches(plan), strict=True):
        for key in ('initial_state', 'targets'):
            assert a[key].shape == b[key].shape and torch.equal(a[key].native(a[key].shape), b[key].native(b[key].shape))


def _rewrite(cache_dirs, tmp_path, mutate):
    target = tmp_path / 'phiml'
    shutil.copytree(cache_dirs['phiml'], target)
    path = target / 'sim_000000.npz'
    data = math.load(str(path))
    math.save(str(path), mutate(data))
    return target, path


@pytest.mark.parametrize('mutate, words', [
    (lambda d: {'metadata': d['metadata']}, "field 'velocity' listed in metadata is missing"),
    (lambda d: {'velocity': d['velocity']}, "expected a dict with 'metadata'"),
    (lambda d: {**d, 'metadata': [1, 2]}, "metadata is a list, expected a dict"),
    (lambda d: {**d, 'metadata': {**d['metadata'], 'fields': 'velocity'}},
     "metadata 'fields' (='velocity') must list the names of the fields (or be left out: then every tensor beside "
     "'metadata' is a field)"),
    (lambda d: {**d, 'metadata': {**d['metadata'], 'fields': []}}, "no fields (expected at least one tensor beside "
                                                                    "'metadata', or metadata 'fields' listing them"),
    (lambda d: {**d, 'mask': math.zeros(spatial(x=16, y=16)), 'metadata': _without_fields(d['metadata'])},
     "field 'mask' (taken for a field: the metadata has no key 'fields' to list the fields) has dims (x (spatial), "
     "y (spatial))"),
    (lambda d: {**d, 'metadata': {**d['metadata'], 'n_frames': 4}}, "has 9 frames, metadata says n_frames=4"),
    (lambda d: {**d, 'velocity': math.rename_dims(d['velocity'], 'time', spatial('time'))}, "has dims"),
    (lambda d: {**d, 'velocity': d['velocity'].time[0]}, "has dims"),
    (lambda d: {**d, 'velocity': math.wrap(np.swapaxes(d['velocity'].numpy('time,x,y,vector'), 0, 1),
                                           spatial(x=16), batch(time=9), spatial(y=16), channel(vector='x,y'))}, "in that order"),
    (lambda d: {**d, 'velocity': math.rename_dims(d['velocity'], 'vector', channel(vector='y,x'))}, "vector item names"),
    (lambda d: {**d, 'velocity': math.wrap(d['velocity'].numpy('time,x,y,vector').astype(np.float64), d['velocity'].shape)},
     "dtype float64, expected float32 for training (the option data.cast_float32=true casts float16/float64 caches "
     "to float32 when opened)"),
    (lambda d: {**d, 'note': 'text', 'metadata': {**d['metadata'], 'fields': ['note', 'velocity']}},
     "field 'note' is a str, expected a PhiML tensor"),
    (lambda d: {**d, 'velocity': math.rename_dims(d['velocity'], 'x,y', spatial('a,b'))},
     "field 'velocity' has spatial dims ('a', 'b'), expected ('x', 'y')"),
    (lambda d: {**d, 'velocity': math.wrap(np.zeros((9, 16, 16, 3), np.float32), batch('time'), spatial('x,y'),
                                           channel(vector='u,u,w'))},
     "field 'velocity' has vector item names ('u', 'u', 'w'), expected 3 distinct names"),
    (lambda d: {**d, 'velocity': math.rename_dims(d['velocity'], 'vector', channel(c='x,y'))}, "has dims (time (batch), "
     "x (spatial), y (spatial), c (channel)), expected time (batch), spatial dims x[, y[, z]], [vector (channel)]"),
    (lambda d: {**d, 'velocity': math.expand(d['velocity'], instance(points=2))}, "points (instance)"),
    (lambda d: {**d, 'velocity': math.expand(d['velocity'], dual(x=3))}, "~x (dual)"),
    (lambda d: {**d, 'velocity': math.expand(d['velocity'], channel(extra=2))}, "extra (channel)"),
], ids=['missing-field', 'no-metadata', 'metadata-not-a-dict', 'fields-not-a-list', 'fields-empty', 'unlisted-tensor',
        'wrong-n-frames', 'time-spatial', 'time-missing', 'x-first', 'swapped-items',
        'float64', 'field-not-a-tensor', 'other-spatial-names', 'repeated-item-names', 'channel-not-vector',
        'instance-dim', 'dual-dim', 'two-channel-dims'])
def test_bad_cache_refused(cache_dirs, tmp_path, tiny_config, mutate, words):
    folder, path = _rewrite(cache_dirs, tmp_path, mutate)
    with pytest.raises(CacheError) as info:
        NativePipeline(folder, tiny_config.data.rollout_steps).open([0, 1])
    assert str(path) in str(info.value) and words in str(info.value)


def test_missing_and_garbage_files(tmp_path):
    manager = PhiMLDataManager(tmp_path)
    with pytest.raises(CacheError, match='sim_000003.npz: cache file missing'):
        manager.load_cache(3)
    (tmp_path / 'sim_000003.npz').write_bytes(b'garbage')
    with pytest.raises(CacheError) as info:
        manager.load_cache(3)
    assert str(info.value) == f"{tmp_path / 'sim_000003.npz'}: not a readable .npz file (File is not a zip file)"


def test_crafted_pickle_not_executed(cache_dirs, tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    path = tmp_path / 'sim_000000.npz'
    np.savez(path, tree=np.asarray({'tree': Payload()}, dtype=object), specs=np.asarray([], dtype=object),
             paths=np.asarray([], dtype=str))
    assert not marker.exists()
    with pytest.raises(CacheError, match="refused to unpickle member 'tree.npy': global 'io.open' is not allowed"):
        PhiMLDataManager(tmp_path).load_cache(0)
    assert not marker.exists()


def test_truncated_file(cache_dirs, tmp_path):
    path = tmp_path / 'sim_000000.npz'
    data = (cache_dirs['phiml'] / 'sim_000000.npz').read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CacheError) as info:
        PhiMLDataManager(tmp_path).load_cache(0)
    assert str(info.value) == f"{path}: not a readable .npz file (File is not a zip file)"


class _Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _crafted_copy(cache_dirs, tmp_path, **members):
    """The tiny cache's sim 0 with some members replaced (by `np.savez`, as `phiml.math.save` writes them)."""
    with np.load(cache_dirs['phiml'] / 'sim_000000.npz', allow_pickle=True) as original:
        arrays = {name: original[name] for name in original.files}
    arrays.update(members)
    np.savez(tmp_path / 'sim_000000.npz', **arrays)
    return tmp_path / 'sim_000000.npz'


@pytest.mark.parametrize('member, words', [
    ('specs', "refused to unpickle member 'specs.npy': global 'io.open' is not allowed"),
    ('root[metadata][seed]:0', "array member 'root[metadata][seed]:0.npy' holds Python objects, expected numbers"),
], ids=['specs', 'array-member'])
def test_crafted_member_not_executed(cache_dirs, tmp_path, member, words):
    marker = tmp_path / 'pwned'
    path = _crafted_copy(cache_dirs, tmp_path, **{member: np.asarray([_Payload(marker)], dtype=object)})
    with pytest.raises(CacheError) as info:
        PhiMLDataManager(tmp_path).load_cache(0)
    assert str(path) in str(info.value) and words in str(info.value)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as unsafe:  # the payload is live: an unrestricted load runs it
        unsafe[member]
    assert marker.exists()


def test_equal_data_gives_equal_bytes_whenever_written(cache_dirs, tmp_path, monkeypatch):
    """Written by `phiml.math.save`, with the zip timestamps fixed afterwards: a rebuilt file equals the original."""
    import time
    data = PhiMLDataManager(cache_dirs['phiml']).load_cache(1)
    paths = []
    for folder, seconds in (('a', 1.0e9), ('b', 1.7e9)):
        monkeypatch.setattr(time, 'time', lambda: seconds)
        paths.append(PhiMLDataManager(tmp_path / folder).save_cache(1, data))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with zipfile.ZipFile(paths[0]) as ours:
        math.save(str(tmp_path / 'stock.npz'), data)
        with zipfile.ZipFile(tmp_path / 'stock.npz') as stock:  # member for member what math.save writes
            assert ours.namelist() == stock.namelist()
            assert all(ours.read(name) == stock.read(name) for name in stock.namelist())
            assert {info.date_time for info in ours.infolist()} == {(1980, 1, 1, 0, 0, 0)}
            assert ours.testzip() is None  # every member's CRC holds
    # dated in place: the bytes are stock math.save's but for the date and time of each local header and directory entry
    stock, dated = (tmp_path / 'stock.npz').read_bytes(), paths[0].read_bytes()
    with zipfile.ZipFile(tmp_path / 'stock.npz') as archive:
        fields = {info.header_offset + 10 + i for info in archive.infolist() for i in range(4)}
        fields |= {entry + 12 + i for entry in npz.directory_offsets(archive) for i in range(4)}
    assert len(stock) == len(dated) and {i for i, (a, b) in enumerate(zip(stock, dated)) if a != b} <= fields
    assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == ['sim_000001.npz']  # no temporary file left


@pytest.mark.parametrize('dtype', [np.float64, np.float16])
def test_cast_float32_serves_other_floats_as_float32(cache_dirs, tmp_path, tiny_config, dtype):
    """`data.cast_float32`, through `configured`: a float64 (or float16) cache, written by stock `phiml.math.save`, is
    served cast to float32 by both modes, the batches equal to numpy's cast of the stored values."""
    from harness.config import load_config
    from harness.plan import make_plan
    stored = {}

    def to_dtype(data):
        stored['velocity'] = data['velocity'].numpy('time,x,y,vector').astype(dtype)
        return {**data, 'velocity': math.wrap(stored['velocity'], data['velocity'].shape)}
    folder, _ = _rewrite(cache_dirs, tmp_path, to_dtype)
    cast = NativePipeline.configured(load_config('burgers', [*TINY_CAST, 'data.cast_float32=true']))
    assert NativePipeline.configured(load_config('burgers', list(TINY_CAST))) is NativePipeline
    for memory in ('load', 'map'):
        pipeline = cast(folder, 2, memory=memory)
        pipeline.open([0])
        assert pipeline.dataset.memory == memory
        plan = make_plan(pipeline.window_keys(), 3, seed=0, epoch=0)
        for keys, batch in zip(plan.batches, pipeline.load_batches(plan)):
            served = batch['initial_state'].native(['batch', 'x', 'y', 'vector'])
            assert served.dtype == torch.float32
            assert np.array_equal(served.numpy(), stored['velocity'][[k.t0 for k in keys]].astype(np.float32))


TINY_CAST = ('sim.resolution=[16,16]', 'sim.n_steps=8', 'data.rollout_steps=2')


def test_forgetting_read_caches_leaves_nothing_a_new_process_would_lack(cache_dirs, tiny_config):
    """After `forget_read_caches` the next open parses and reads headers afresh, as a new process does (the cold reads of
    the bench depend on it)."""
    pipeline = NativePipeline(cache_dirs['phiml'], tiny_config.data.rollout_steps)
    pipeline.open(tiny_config.train_sims)
    assert npz._LAYOUTS and npz._npy_header.cache_info().currsize
    NativePipeline.forget_read_caches()
    assert not npz._LAYOUTS and npz._npy_header.cache_info().currsize == 0
