"""What makes the native dataset fast, pinned as properties (no timings): the network sees the gathered memory itself,
a batch allocates only its own bytes, batches never alias each other or the dataset, every path gives the same values."""
import tracemalloc

import numpy as np
import pytest
import torch
from phiml import math

from harness import model
from harness.pipeline import BatchPlan, WindowKey
from harness.plan import make_plan
from harness.bench.stages import network_inputs
from phiml_native import PhiMLDataManager, PhiMLDataset
from phiml_native import dataset as dataset_module
from benchmarks.naive import NaiveWindowLoader


@pytest.fixture(params=['take', 'stack'])
def dataset(cache_dirs, tiny_config, monkeypatch, request):
    """The native dataset, its windows gathered by `np.take` (tiny windows) or, as large ones are, by `torch.stack`."""
    if request.param == 'stack':
        monkeypatch.setattr(dataset_module, 'STACK_BYTES', 0)
    return PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), tiny_config.train_sims, tiny_config.data.rollout_steps)


class _Recorder(torch.nn.Module):
    """Forwards to `net` and remembers the storage address of every input it is called with."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.untyped_storage().data_ptr())
        return self.net(x)


def _storage(tensor) -> int:
    return tensor.native(tensor.shape.names).untyped_storage().data_ptr()


def test_network_is_called_on_the_gathered_memory(dataset, tiny_config):
    batch = dataset.gather([WindowKey(0, 0), WindowKey(2, 3), WindowKey(1, 6)])
    gathered = batch['initial_state'].native(batch['initial_state'].shape.names)
    assert isinstance(gathered, torch.Tensor) and gathered.dtype == torch.float32
    recorder = _Recorder(model.make_network(tiny_config.model, 2, 2, seed=0))
    model.rollout_loss(recorder, batch['initial_state'], batch['targets'])
    assert recorder.inputs[0] == gathered.untyped_storage().data_ptr()  # step 1 of the rollout: the batch itself
    assert all(ptr == gathered.untyped_storage().data_ptr() for ptr in
               (t.untyped_storage().data_ptr() for t in network_inputs(batch)))


def test_a_batch_allocates_its_own_bytes_only(dataset):
    keys = [WindowKey(0, 0), WindowKey(2, 5)]
    dataset.gather(keys)  # shapes for this batch size are built once, outside the measurement
    tracemalloc.start()
    batch = dataset.gather(keys)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    natives = [t.native(t.shape.names) for t in batch.values()]
    batch_bytes = sum(native.nbytes for native in natives)
    assert batch_bytes == len(keys) * (1 + dataset.rollout_steps) * dataset.arrays['velocity'][0, 0].nbytes
    overhead = 16 * 1024  # Python objects: the dicts, tensors, index arrays
    if dataset_module.STACK_BYTES:  # np.take's output is numpy's, which tracemalloc sees (torch's it does not)
        assert peak < batch_bytes + overhead < dataset.nbytes  # PhiML batch indexing would copy all of `arrays`


def test_batches_are_fresh_memory(dataset):
    plan = make_plan(dataset.window_keys(), 4, seed=0, epoch=0)
    batches = list(dataset.iterate_plan(plan))
    pointers = [_storage(b[k]) for b in batches for k in b]
    assert len(set(pointers)) == len(pointers)  # a kept batch is never overwritten by a later one
    data = dataset.arrays['velocity']
    for pointer in pointers:
        assert not data.ctypes.data <= pointer < data.ctypes.data + data.nbytes


def test_a_batch_is_one_array_of_whole_windows(dataset):
    """One copy per window, its initial frame and targets adjacent: both tensors are views of one fresh array."""
    batch = dataset.gather([WindowKey(1, 3), WindowKey(0, 0), WindowKey(2, 5)])
    initial = batch['initial_state'].native(batch['initial_state'].shape.names)
    targets = batch['targets'].native(batch['targets'].shape.names)
    frame_bytes = dataset.arrays['velocity'][0, 0].nbytes
    window_bytes = (1 + dataset.rollout_steps) * frame_bytes
    assert targets.data_ptr() == initial.data_ptr() + frame_bytes
    assert initial.stride(0) * 4 == targets.stride(0) * 4 == window_bytes
    windows = np.concatenate([initial.numpy()[:, None], targets.numpy()], axis=1)
    expected = [dataset.arrays['velocity'][sim, t0:t0 + 1 + dataset.rollout_steps] for sim, t0 in ((1, 3), (0, 0), (2, 5))]
    assert np.array_equal(windows, np.stack(expected))


def test_take_and_stack_gather_the_same_bytes(dataset, monkeypatch):
    plan = make_plan(dataset.window_keys(), 5, seed=1, epoch=0)
    first = list(dataset.iterate_plan(plan))
    monkeypatch.setattr(dataset_module, 'STACK_BYTES', 0 if dataset_module.STACK_BYTES else 2 ** 20)
    for a, b in zip(first, dataset.iterate_plan(plan), strict=True):
        for key in a:
            assert a[key].shape == b[key].shape
            assert a[key].native(a[key].shape.names).numpy().tobytes() == b[key].native(a[key].shape.names).numpy().tobytes()


def test_naive_loader_serves_the_same_batches(dataset, tiny_config):
    plan = make_plan(dataset.window_keys(), 4, seed=2, epoch=1)
    naive = NaiveWindowLoader(dataset.data_manager, tiny_config.data.rollout_steps)
    for a, b in zip(dataset.iterate_plan(plan), naive.iterate_plan(plan), strict=True):
        for key in ('initial_state', 'targets'):
            assert a[key].shape.names == b[key].shape.names and a[key].shape == b[key].shape
            assert a[key].backend == b[key].backend
            assert np.array_equal(a[key].numpy(a[key].shape.names), b[key].numpy(a[key].shape.names))


def test_replaced_arrays_are_served(dataset):
    """`harness.bugs` swaps `arrays` after open to inject faults; the gather must read what is there now."""
    key = [WindowKey(1, 2)]
    before = dataset.gather(key)['initial_state'].numpy('batch,x,y,vector')
    dataset.arrays['velocity'] = dataset.arrays['velocity'] * 2
    after = dataset.gather(key)['initial_state'].numpy('batch,x,y,vector')
    assert np.array_equal(after, before * 2)


def test_plan_keys_checked_before_the_first_batch(dataset):
    plan = BatchPlan(seed=0, epoch=0, batches=((WindowKey(0, 0),), (WindowKey(9, 0),)))
    with pytest.raises(KeyError, match='sim 9 is not among'):
        dataset.iterate_plan(plan)


def test_open_reads_each_file_once_into_its_slot(cache_dirs, tiny_config, monkeypatch):
    calls, backed, opened = [], [], []
    original, original_load = PhiMLDataManager.load_cache, PhiMLDataset._load

    def counting(self, sim, mmap=False, out=None, **kwargs):
        calls.append((sim, mmap, sorted(out) if out else None))
        result = original(self, sim, mmap=mmap, out=out, **kwargs)
        if out:  # the reader filled the slot itself: no second copy
            backed.append(np.shares_memory(result['velocity'].numpy('time,x,y,vector'), out['velocity']))
        return result

    def loading(self):
        opened.append(self)
        original_load(self)

    monkeypatch.setattr(PhiMLDataset, '_load', loading)

    monkeypatch.setattr(PhiMLDataManager, 'load_cache', counting)
    data = PhiMLDataset(PhiMLDataManager(cache_dirs['phiml']), [2, 0, 1], 2)
    assert calls == [(2, False, None), (0, False, ['velocity']), (1, False, ['velocity'])]
    assert backed == [True, True]
    last = math.load(str(cache_dirs['phiml'] / 'sim_000001.npz'))['velocity']
    assert np.array_equal(data.arrays['velocity'][2], last.numpy('time,x,y,vector'))
    first = math.load(str(cache_dirs['phiml'] / 'sim_000002.npz'))['velocity']
    assert np.array_equal(data.arrays['velocity'][0], first.numpy('time,x,y,vector'))
    assert data.arrays['velocity'].flags.c_contiguous and data.arrays['velocity'].flags.writeable
