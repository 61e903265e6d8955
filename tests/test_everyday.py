"""The everyday audit: each pipeline's own loader and trainer pass it, and each class of everyday bug fails it with
its own diagnosis kind."""
import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import TINY
from harness.config import load_config
from harness.equivalence.everyday import EverydayRow, audit_everyday, expected_sizes, shuffles_needed
from harness.pipeline import load_pipeline
from harness.report.verdict import Check, everyday_check
from harness.selftest.bugs_everyday import (EverydayDropsLast, EverydayEpochsAlike, ReusedOutputBuffer,
                                            VariantReorders)
from legacy import LegacyPipeline
from phiml_native import NativePipeline, PhiMLSyntheticTrainer

NpyPipeline = load_pipeline('tests.npy_pipeline:NpyPipeline')
EVERY = '21 windows served, 21 distinct, expected 21 (= 3 sims x 7 windows)'
PASSED = [
    ('epoch 0: each window exactly once', EVERY),
    ('epoch 0: batch sizes, last partial batch kept', '5 x 4, 1 x 1'),
    ('epoch 1: each window exactly once', EVERY),
    ('epoch 1: batch sizes, last partial batch kept', '5 x 4, 1 x 1'),
    ('epochs in different orders', 'epochs 0 ... 1: each in another order'),
    ('same seed, same batches', 'a fresh instance, seed 42, 2 epochs: 12 batches bitwise identical'),
    ('other seed, other order', 'seeds 42 and 43, epoch 0: different orders'),
    ('training and validation sims apart', 'training serves sims [0, 1, 2], validation sims [3]'),
    ('everyday batches keep their values', '12 batches of 2 epochs re-checked after the last one was built: unchanged'),
    ('plan-driven batches keep their values',
     '6 batches of a plan-driven epoch re-checked after the last one was built: unchanged'),
    ('everyday trainer feeds what its loader serves', "12 steps over 2 epochs; 12 network inputs identified as windows, "
                                                      "42 windows; the order of the pipeline's own loader"),
    ('everyday trainer = plan-driven training',
     'the fed windows replayed through the plan-driven train on a clone: 12 steps: loss curves bitwise equal'),
    ('network inputs keep their values', '12 inputs the trainer fed re-checked after training: unchanged'),
]
VARIANTS = {
    'legacy': [('loader variant num_workers=2, persistent_workers=False',
                '2 epochs against num_workers=0: 12 batches bitwise identical'),
               ('loader variant num_workers=2, persistent_workers=True',
                '2 epochs against num_workers=0: 12 batches bitwise identical')],
    'phiml': [('loader variant prefetch=True', '2 epochs against prefetch=False: 12 batches bitwise identical')],
    'npy': [],
}


def _audit(pipeline_cls, folder, config, sim, wrap=None):
    def open_fresh(sims):
        fresh = pipeline_cls(folder, config.data.rollout_steps)
        fresh = wrap(fresh) if wrap else fresh
        fresh.open(sims)
        return fresh
    return audit_everyday(open_fresh(config.train_sims), open_fresh, config, sim)


def _failed(rows):
    return [(r.check, r.kind) for r in rows if not r.passed]


@pytest.fixture(scope='module')
def npy_dir(tiny_sim, tmp_path_factory):
    pipeline = NpyPipeline(tmp_path_factory.mktemp('npy'), tiny_sim.config.data.rollout_steps)
    for sim in tiny_sim.config.all_sims:
        pipeline.write_cache(sim, tiny_sim.sim_fields(sim), tiny_sim.metadata(sim))
    return pipeline.cache_dir


@pytest.mark.parametrize('name', ['legacy', 'phiml', 'npy'])
def test_clean_pipelines_pass(name, cache_dirs, npy_dir, tiny_config, tiny_sim):
    cls = {'legacy': LegacyPipeline, 'phiml': NativePipeline, 'npy': NpyPipeline}[name]
    rows = _audit(cls, npy_dir if name == 'npy' else cache_dirs[name], tiny_config, tiny_sim)
    assert [(r.pipeline, r.check, r.passed, r.detail) for r in rows] == [
        (name, check, True, detail) for check, detail in PASSED + VARIANTS[name]]
    assert {r.kind for r in rows if 'variant' in r.check} <= {'loader variant'}
    assert [r.kind for r in rows if 'keep their values' in r.check] == ['batch lifetime'] * 3


def test_expected_sizes():
    assert expected_sizes(21, 4) == [4, 4, 4, 4, 4, 1] and expected_sizes(8, 4) == [4, 4] and expected_sizes(3, 4) == [3]


# --- each class of bug, with its diagnosis kind --------------------------------------------------------------------

@pytest.mark.parametrize('bug, failed, detail', [
    (EverydayEpochsAlike, [('epochs in different orders', 'everyday path')],
     'epochs 0 ... 1: epoch 1 repeats the order of epoch 0'),
    (EverydayDropsLast, [('epoch 0: each window exactly once', 'everyday path'),
                         ('epoch 0: batch sizes, last partial batch kept', 'everyday path'),
                         ('epoch 1: each window exactly once', 'everyday path'),
                         ('epoch 1: batch sizes, last partial batch kept', 'everyday path'),
                         ('training and validation sims apart', 'everyday path')],
     '20 windows served, 20 distinct, expected 21 (= 3 sims x 7 windows)'),
    (ReusedOutputBuffer, [('everyday batches keep their values', 'batch lifetime'),
                          ('plan-driven batches keep their values', 'batch lifetime'),
                          ('network inputs keep their values', 'batch lifetime')],
     '12 of 12 batches of 2 epochs changed after later ones were built (first: epoch 0, batch 0): the pipeline reuses '
     'an output buffer, so a batch a user keeps is overwritten'),
    (VariantReorders, [('loader variant background_threads=2', 'loader variant')],
     '2 epochs against prefetch=False: epoch 0, batch 0 differs: windows ['),
], ids=['epochs alike', 'drops last', 'reused buffer', 'variant reorders'])
def test_selftest_bugs_fail_their_audits(bug, failed, detail, cache_dirs, tiny_config, tiny_sim):
    rows = _audit(NativePipeline, cache_dirs['phiml'], tiny_config, tiny_sim, wrap=bug)
    assert _failed(rows) == failed
    assert [r.detail for r in rows if not r.passed][0].startswith(detail)


def test_a_reused_buffer_shows_in_what_the_legacy_trainer_fed(cache_dirs, tiny_config, tiny_sim):
    rows = _audit(LegacyPipeline, cache_dirs['legacy'], tiny_config, tiny_sim, wrap=ReusedOutputBuffer)
    detail = {r.check: r.detail for r in rows}['network inputs keep their values']
    assert detail == ("12 inputs the trainer fed re-checked after training: 11 changed: the trainer's batches are "
                      "overwritten by later ones")


# --- everyday bugs written as a team would write them ----------------------------------------------------------------

class SharedGeneratorLegacy(LegacyPipeline):
    """`DataLoader(shuffle=True, generator=g)`: the order shares `g` with the workers' base seed, so persistent workers
    serve later epochs in another order (torch 2.x behaviour)."""

    def data_loader(self, batch_size, shuffle=True, *, seed, epoch=0, num_workers=0, persistent_workers=False):
        return DataLoader(self._require_open(), batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          persistent_workers=persistent_workers, generator=torch.Generator().manual_seed(seed))

    def everyday_epochs(self, batch_size, *, seed, epochs, num_workers=0, persistent_workers=False):
        loader = self.data_loader(batch_size, seed=seed, num_workers=num_workers, persistent_workers=persistent_workers)
        return (map(self.to_phiml, loader) for _ in range(epochs))


def test_shared_generator_with_persistent_workers_is_a_loader_variant_finding(cache_dirs, tiny_config, tiny_sim):
    rows = _audit(SharedGeneratorLegacy, cache_dirs['legacy'], tiny_config, tiny_sim)
    assert _failed(rows) == [('loader variant num_workers=2, persistent_workers=True', 'loader variant')]
    assert [r.detail for r in rows if not r.passed][0].startswith(
        '2 epochs against num_workers=0: epoch 1, batch 0 differs: windows [')


class TrainerForgetsEpoch(NativePipeline):
    """The trainer reshuffles every epoch with epoch 0, while the loader's own epochs differ."""

    def everyday_train(self, network, optimizer, batch_size, *, seed, epochs):
        trainer = PhiMLSyntheticTrainer(network, optimizer)
        return [loss for _ in range(epochs)
                for loss in trainer.train_batches(self.dataset.iterate_batches(batch_size, seed=seed, epoch=0))]


class TrainerScalesTargets(NativePipeline):
    """The trainer rescales the targets (a unit conversion only in the training loop)."""

    def everyday_train(self, network, optimizer, batch_size, *, seed, epochs):
        trainer = PhiMLSyntheticTrainer(network, optimizer)
        batches = (dict(b, targets=b['targets'] * 1.001) for e in range(epochs)
                   for b in self.dataset.iterate_batches(batch_size, seed=seed, epoch=e))
        return trainer.train_batches(batches)


class SeedIgnored(NativePipeline):
    """Loader and trainer shuffle with a fixed seed."""

    def everyday_epochs(self, batch_size, *, seed, epochs, prefetch=False):
        return super().everyday_epochs(batch_size, seed=0, epochs=epochs, prefetch=prefetch)

    def everyday_train(self, network, optimizer, batch_size, *, seed, epochs):
        return super().everyday_train(network, optimizer, batch_size, seed=0, epochs=epochs)


class SeedFromInstance(NativePipeline):
    """Each instance draws its own seed (e.g. from the clock): the same seed does not repeat on a fresh instance."""
    counter = itertools.count()

    def open(self, sims):
        super().open(sims)
        self.own_seed = next(self.counter)

    def everyday_epochs(self, batch_size, *, seed, epochs, prefetch=False):
        return super().everyday_epochs(batch_size, seed=seed + self.own_seed, epochs=epochs, prefetch=prefetch)


class OpensEverySim(LegacyPipeline):
    """Opens every sim in the folder whatever it is asked: training draws validation windows."""

    def open(self, sims):
        super().open([0, 1, 2, 3])


@pytest.mark.parametrize('cls, failed, detail', [
    (TrainerForgetsEpoch, [('everyday trainer feeds what its loader serves', 'everyday path')],
     "12 steps over 2 epochs; 12 network inputs identified as windows, 42 windows; not the order of the pipeline's own "
     "loader (first fed ["),
    (TrainerScalesTargets, [('everyday trainer = plan-driven training', 'everyday path')],
     'the fed windows replayed through the plan-driven train on a clone: 12 steps: curves first differ at step 0; max '
     'relative difference '),
    (SeedIgnored, [('other seed, other order', 'everyday path')], 'seeds 42 and 43, epoch 0: IDENTICAL orders'),
    (SeedFromInstance, [('same seed, same batches', 'everyday path')],
     'a fresh instance, seed 42, 2 epochs: epoch 0, batch 0 differs: windows ['),
    (OpensEverySim, [('epoch 0: each window exactly once', 'everyday path'),
                     ('epoch 0: batch sizes, last partial batch kept', 'everyday path'),
                     ('epoch 1: each window exactly once', 'everyday path'),
                     ('epoch 1: batch sizes, last partial batch kept', 'everyday path'),
                     ('training and validation sims apart', 'everyday path')],
     '28 windows served, 28 distinct, expected 21 (= 3 sims x 7 windows); from sims outside [0, 1, 2]: [3]'),
], ids=['trainer forgets epoch', 'trainer scales targets', 'seed ignored', 'seed per instance', 'opens every sim'])
def test_team_bugs_fail_their_audits(cls, failed, detail, cache_dirs, tiny_config, tiny_sim):
    folder = cache_dirs['legacy' if issubclass(cls, LegacyPipeline) else 'phiml']
    rows = _audit(cls, folder, tiny_config, tiny_sim)
    assert _failed(rows) == failed
    assert [r.detail for r in rows if not r.passed][0].startswith(detail)
    if cls is OpensEverySim:
        assert {r.check: r.detail for r in rows}['training and validation sims apart'] == (
            'training serves sims [0, 1, 2, 3], validation sims [0, 1, 2, 3]; shared: [0, 1, 2, 3]; validation: 28 '
            'windows served, 28 distinct, expected 7 (= 1 sims x 7 windows); from sims outside [3]: [0, 1, 2]')


class UnknownVariant(NativePipeline):
    """Declares a loader option its `everyday_epochs` does not take."""

    def loader_variants(self):
        return [{'prefetch': False}, {'workers': 2}]


def test_an_everyday_path_that_raises_is_a_failed_row(cache_dirs, tiny_config, tiny_sim):
    rows = _audit(UnknownVariant, cache_dirs['phiml'], tiny_config, tiny_sim)
    assert [(r.check, r.passed) for r in rows] == [(check, True) for check, _ in PASSED] + [('everyday path runs', False)]
    assert rows[-1].detail == ("TypeError: NativePipeline.everyday_epochs() got an unexpected keyword argument "
                               "'workers'")


# --- the verdict check ------------------------------------------------------------------------------------------------

def _rows(name, failing=()):
    checks = [('epoch 0: each window exactly once', 'everyday path'), ('everyday batches keep their values',
                                                                        'batch lifetime'),
              ('loader variant prefetch=True', 'loader variant')]
    return [EverydayRow(name, c, c not in failing, f"{c} detail", kind) for c, kind in checks]


def test_everyday_check():
    assert everyday_check(_rows('legacy') + _rows('phiml')) == Check(
        'everyday paths', True, "6 audits of legacy and phiml passed: their own loaders serve each window once per "
        "epoch, seeded, train and validation apart, batches keep their values, every loader variant serves the same "
        "batches, and their own trainers train as the plan-driven path does")
    assert everyday_check(_rows('legacy', ['everyday batches keep their values']) + _rows('phiml')) == Check(
        'everyday paths', False, "legacy: everyday batches keep their values (batch lifetime): everyday batches keep "
        "their values detail; the code a user runs every day does not deliver what the comparison judged")
    assert everyday_check([]) == Check('everyday paths', False, "the everyday paths were not audited")


# --- few windows: a correct shuffle repeats an order by chance ---------------------------------------------------------

def _epoch_orders(pipeline, seed, epochs):
    """Each epoch's initial states, as bytes, from the pipeline's own loader (equal bytes: the same order)."""
    return [b''.join(batch['initial_state'].numpy(['batch', 'x', 'y', 'vector']).tobytes() for batch in batches)
            for batches in pipeline.everyday_epochs(4, seed=seed, epochs=2)]


def test_shuffles_needed():  # until a correct shuffle repeating every time has a chance below 1e-9
    assert [shuffles_needed(n) for n in (0, 1, 2, 3, 4, 12, 13, 21)] == [0, 0, 30, 12, 7, 2, 1, 1]


def test_few_windows_repeating_an_order_by_chance_pass(cache_dirs, tiny_sim):
    pipeline = NativePipeline(cache_dirs['phiml'], 8)  # 9 frames, rollout 8: one window per sim, 3 windows, 6 orders
    pipeline.open([0, 1, 2])
    orders = {seed: _epoch_orders(pipeline, seed, 2) for seed in range(60)}
    other_seed_repeats = next(s for s in range(59) if orders[s][0] == orders[s + 1][0])
    next_epoch_repeats = next(s for s in range(60) if orders[s][0] == orders[s][1])
    for seed, check, detail in [
        (other_seed_repeats, 'other seed, other order', f"seeds {other_seed_repeats} and "),
        (next_epoch_repeats, 'epochs in different orders',
         "epochs 0 ... 1: epoch 1 repeats the order of epoch 0, as a correct shuffle of 3 windows does with chance 1 in "
         "6; 13 epochs of a fresh instance are not all alike")]:
        config = load_config('burgers', [*TINY, 'data.rollout_steps=8', f'seed={seed}'])
        rows = {r.check: r for r in _audit(NativePipeline, cache_dirs['phiml'], config, tiny_sim)}
        assert all(r.passed for r in rows.values()), [r for r in rows.values() if not r.passed]
        assert rows[check].detail.startswith(detail)
    assert rows['epoch 0: each window exactly once'].detail == (
        '3 windows served, 3 distinct, expected 3 (= 3 sims x 1 windows)')


def test_few_windows_still_catch_an_ignored_seed(cache_dirs, tiny_sim):
    config = load_config('burgers', [*TINY, 'data.rollout_steps=8'])
    rows = _audit(SeedIgnored, cache_dirs['phiml'], config, tiny_sim)
    assert _failed(rows) == [('other seed, other order', 'everyday path')]
    assert [r.detail for r in rows if not r.passed] == ['seeds 42 and 43 ... 54, epoch 0: IDENTICAL orders']
