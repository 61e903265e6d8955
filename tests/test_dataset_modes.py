"""The native dataset's modes: loaded and memory-mapped give bitwise-identical batches, `auto` follows the budget, and
prefetching gives the same batches without holding any it has handed out."""
import os
import weakref

import numpy as np
import pytest
from phiml import math
from phiml.math._tensors import Dense

from harness import model
from harness.config import load_config
from harness.plan import make_plan
from phiml_native import PhiMLDataManager, PhiMLDataset, PhiMLSyntheticTrainer, create_phiml


def _dataset(cache_dirs, config, **kwargs):
    return PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), config.train_sims, config.data.rollout_steps, **kwargs)


def _natives(batch):
    return [batch[part].native(batch[part].shape.names) for part in ('initial_state', 'targets')]


def _assert_identical(a, b):
    for x, y in zip(_natives(a), _natives(b)):
        assert x.shape == y.shape and x.dtype == y.dtype and x.numpy().tobytes() == y.numpy().tobytes()
    assert [a[p].shape for p in a] == [b[p].shape for p in b]


def test_mapped_and_loaded_batches_are_bitwise_identical(cache_dirs, tiny_config):
    loaded, mapped = (_dataset(cache_dirs, tiny_config, memory=mode) for mode in ('load', 'map'))
    assert (loaded.memory, mapped.memory) == ('load', 'map')
    assert not mapped.arrays and loaded.maps == {} and loaded.nbytes == mapped.nbytes == loaded.arrays['velocity'].nbytes
    for view in mapped.maps['velocity']:  # views into the files, not copies
        assert not view.flags.writeable and not view.flags.owndata
    plan = make_plan(loaded.window_keys(), 4, seed=3, epoch=1)
    for a, b in zip(loaded.iterate_plan(plan), mapped.iterate_plan(plan), strict=True):
        _assert_identical(a, b)
    for a, b in zip(loaded.iterate_batches(5, seed=2), mapped.iterate_batches(5, seed=2), strict=True):
        _assert_identical(a, b)


@pytest.mark.parametrize('first', ['compact', 'float64'])
def test_sims_stored_compact_or_as_float64_are_served_as_float32_in_both_modes(tmp_path, first):
    """Files written by stock `phiml.math.save` where a sim is stored compact (constant in time: one frame, expanded
    when read) or as float64 (`cast_float32`): the same float32 frames as its explicit float32 copy, loaded or mapped,
    whether it comes first (sizes taken from it) or after another sim."""
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(6, 8, 1)).astype(np.float32)
    frames[:] = frames[:1] if first == 'compact' else frames
    dims = (math.batch('time'), math.spatial('x'), math.channel(vector='x'))
    explicit = math.wrap(frames, *dims)
    if first == 'compact':  # one frame's array, with the dims in the contract's order (`math.expand` puts time last)
        stored = Dense(frames[0], ('x', 'vector'), explicit.shape, explicit._backend)
    else:
        stored = math.wrap(frames.astype(np.float64), *dims)
    for sim, tensor in enumerate([stored, explicit, stored]):
        math.save(str(tmp_path / f'sim_{sim:06d}.npz'), {'velocity': tensor, 'metadata': {'n_frames': 6}})
    if first == 'compact':
        assert math.load(str(tmp_path / 'sim_000000.npz'))['velocity']._native.shape == (8, 1)  # stored compact
    served = {mode: PhiMLDataset(PhiMLDataManager(tmp_path), [0, 1, 2], 2, memory=mode, cast_float32=True)
              for mode in ('load', 'map')}
    keys = served['load'].window_keys()
    batches = {mode: dataset.gather(keys) for mode, dataset in served.items()}
    _assert_identical(batches['load'], batches['map'])
    initial = batches['load']['initial_state'].numpy('batch,x,vector')
    assert initial.dtype == np.float32
    for row, key in enumerate(keys):
        assert initial[row].tobytes() == frames[key.t0].tobytes()


@pytest.mark.parametrize('stack_bytes', [2 ** 20, 0], ids=['take', 'torch.stack'])
def test_an_empty_batch_is_empty_in_both_modes(cache_dirs, tiny_config, monkeypatch, stack_bytes):
    """A plan's empty batch (or `gather([])`) is a batch of 0 windows with the dims of any other, loaded or mapped."""
    monkeypatch.setattr('phiml_native.dataset.STACK_BYTES', stack_bytes)
    loaded, mapped = (_dataset(cache_dirs, tiny_config, memory=mode) for mode in ('load', 'map'))
    one, empty = loaded.gather(loaded.window_keys()[:1]), loaded.gather([])
    _assert_identical(empty, mapped.gather([]))
    assert [empty[p].shape.sizes for p in empty] == [(0, *one[p].shape.sizes[1:]) for p in one]


def test_auto_loads_what_fits_the_budget_and_maps_the_rest(cache_dirs, tiny_config, monkeypatch):
    assert _dataset(cache_dirs, tiny_config).memory == 'load'  # a tiny cache fits half the RAM
    files = [PhiMLDataManager(cache_dirs['phiml']).get_cached_path(s) for s in tiny_config.train_sims]
    ram = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    cached = sum(f.stat().st_size for f in files)
    assert _dataset(cache_dirs, tiny_config, memory_budget=(cached + 0.5) / ram).memory == 'load'  # fits, to the byte
    assert _dataset(cache_dirs, tiny_config, memory_budget=(cached - 0.5) / ram).memory == 'map'
    with pytest.raises(ValueError, match="`memory` \\(='disk'\\) must be one of"):
        _dataset(cache_dirs, tiny_config, memory='disk')


def test_config_chooses_the_mode(cache_dirs, tiny_config):
    import dataclasses
    config = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, memory='map', prefetch=False))
    dataset = create_phiml(config, config.train_sims, cache_dirs['phiml'])
    assert dataset.memory == 'map' and dataset.prefetch is False
    assert load_config('burgers', []).data.memory == 'auto'


def test_a_bug_wrapper_replacing_arrays_is_served_in_mapped_mode_too(cache_dirs, tiny_config):
    mapped = _dataset(cache_dirs, tiny_config, memory='map')
    before = mapped.gather(mapped.window_keys()[:3])
    mapped.arrays['velocity'] = np.stack(mapped.maps['velocity']).reshape(len(mapped.sim_indices), mapped.n_frames,
                                                                            *mapped.shapes['velocity'].sizes[1:]) * 2
    after = mapped.gather(mapped.window_keys()[:3])
    assert np.array_equal(_natives(after)[1].numpy(), 2 * _natives(before)[1].numpy())


@pytest.mark.parametrize('memory', ['load', 'map'])
def test_prefetch_gives_the_same_batches(cache_dirs, tiny_config, memory):
    dataset = _dataset(cache_dirs, tiny_config, memory=memory)
    plain = list(dataset.iterate_batches(4, seed=5, epoch=2, prefetch=False))
    ahead = list(dataset.iterate_batches(4, seed=5, epoch=2, prefetch=True))
    assert len(plain) == len(ahead) == 6
    for a, b in zip(plain, ahead):
        _assert_identical(a, b)


def test_prefetch_holds_no_batch_it_has_handed_out(cache_dirs, tiny_config):
    batches = _dataset(cache_dirs, tiny_config).iterate_batches(4, seed=0, prefetch=True)
    for _ in range(5):
        batch = next(batches)
        refs = [weakref.ref(native) for native in _natives(batch)]
        del batch
        assert [ref() for ref in refs] == [None, None]  # only the next batch, being built, is referenced
    batches.close()  # the worker thread ends with the iterator


def test_trainer_losses_equal_with_and_without_prefetch(cache_dirs, tiny_config):
    losses = []
    for prefetch in (False, True):
        net = model.make_network(tiny_config.model, 2, 2, seed=1)
        dataset = _dataset(cache_dirs, tiny_config, prefetch=prefetch)
        trainer = PhiMLSyntheticTrainer(net, model.make_optimizer(net, tiny_config.trainer.learning_rate), 4, seed=0)
        losses.append(trainer.train(dataset, num_epochs=2))
    assert losses[0] == losses[1] and len(losses[0]) == 12
