"""What a cache carries besides its tensors: every source key with its value and type, in both caches."""
import shutil

import numpy as np
import pytest

from harness.cache.migrate import migrate_cache
from harness.config import HealthConfig
from harness.equivalence.metadata import MetadataFinding, carried_metadata, compare_metadata, hint_keys, read_back
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from tests.npy_pipeline import NpyPipeline
from user_data import TEAM_META, write_team_pt

SIMS = [0, 1, 2, 3]


def _read_back(pipeline, sims=SIMS):
    return read_back(pipeline, sims, HealthConfig())


def _makers(*classes, rollout_steps=2):
    return {cls.name: (lambda folder, c=cls: c(folder, rollout_steps)) for cls in classes}


def test_hint_keys_are_asked_from_each_writer(cache_dirs):
    fields, _ = LegacyPipeline(cache_dirs['legacy'], 2).read_fields(0)
    assert hint_keys(lambda folder: LegacyPipeline(folder, 2), fields) == ['field_channels', 'spatial_dims']
    assert hint_keys(lambda folder: NativePipeline(folder, 2), fields) == []
    assert hint_keys(lambda folder: NpyPipeline(folder, 2), fields) == []


def test_both_caches_carry_the_simulations_metadata(cache_dirs, tiny_sim):
    read = {'legacy': _read_back(LegacyPipeline(cache_dirs['legacy'], 2)),
            'phiml': _read_back(NativePipeline(cache_dirs['phiml'], 2))}
    report = carried_metadata(tiny_sim, SIMS, _makers(LegacyPipeline, NativePipeline), read)
    assert [back.health.rows for back in read.values()] == [[], []]
    assert read['phiml'].health.detail == ("healthy: 4 sims x 9 frames of 'velocity'; no NaN/Inf, constant or repeated "
                                           "frames, no |value| > 100")
    assert report and report.findings == [] and report.kind == 'none'
    assert report.hints == {'legacy': ['field_channels', 'spatial_dims'], 'phiml': []}
    assert report.keys == ['domain_size', 'dt', 'fields', 'n_frames', 'physics', 'resolution', 'scenario', 'seed',
                           'sim_index', 'viscosity']
    assert report.detail == ("every key of the source metadata (simulation, 10 keys) arrived in the legacy, phiml "
                             "caches with its value and type, in all 4 sims (hint keys of a writer, not findings: legacy "
                             "['field_channels', 'spatial_dims'])")


def test_a_foreign_pipeline_is_read_through_the_interface(tmp_path, tiny_sim):
    npy = NpyPipeline(tmp_path / 'npy', 2)
    for sim in SIMS:
        npy.write_cache(sim, tiny_sim.sim_fields(sim), tiny_sim.metadata(sim))
    report = carried_metadata(tiny_sim, SIMS, _makers(NpyPipeline), {'npy': _read_back(npy)})
    assert report, report.detail


@pytest.mark.parametrize('change, kind, detail', [
    (lambda m: m.update(dt=np.float32(m['dt'])), 'type', "0.009999999776482582 (float32) instead of 0.01 (float)"),
    (lambda m: m.update(dt=float(np.float32(m['dt']))), 'value',
     "0.009999999776482582 (float) instead of 0.01 (float): the source's value rounded to float32"),
    (lambda m: m.update(n_frames=float(m['n_frames'])), 'type', "9.0 (float) instead of 9 (int)"),
    (lambda m: m.update(resolution=tuple(m['resolution'])), 'type', "(16, 16) (tuple) instead of [16, 16] (list)"),
    (lambda m: m.update(resolution=np.array(m['resolution'])), 'type',
     "[16, 16] (ndarray int64) instead of [16, 16] (list)"),
    (lambda m: m.update(seed=True), 'type', "True (bool) instead of 42 (int)"),
    (lambda m: m.update(viscosity=0.004), 'value', "0.004 (float) instead of 0.003 (float)"),
    (lambda m: m.pop('viscosity'), 'missing', "dropped (the source has 0.003 (float))"),
    (lambda m: m.update(units='SI'), 'extra', "not in the source, found 'SI' (str)"),
], ids=['float32-scalar', 'float32-rounded', 'int-as-float', 'list-as-tuple', 'list-as-array', 'int-as-bool', 'value',
        'dropped', 'added'])
def test_every_change_of_a_key_is_a_finding(tiny_sim, change, kind, detail):
    source = [tiny_sim.metadata(sim) for sim in SIMS]
    changed = [dict(m) for m in source]
    change(changed[2])
    report = compare_metadata(source, {'phiml': changed, 'legacy': [dict(m) for m in source]}, SIMS, {})
    key = next(k for k in set(changed[2]) ^ set(source[2]) | {k for k in source[2] if k in changed[2]
                                                              and repr(changed[2][k]) != repr(source[2][k])})
    assert report.findings == [MetadataFinding('phiml', 2, key, kind, detail)]
    assert not report and report.kind == f"metadata {kind}"
    assert report.detail == f"1 metadata finding(s) against the source metadata (simulation): phiml sim 2 {key!r}: {detail}"


def test_nan_equals_nan_and_key_order_does_not_matter(tiny_sim):
    source = [dict(tiny_sim.metadata(0), loss=float('nan'), nested={'a': 1, 'b': [1.5, 2]})]
    reordered = [dict(reversed(list(dict(source[0], nested={'b': [1.5, 2], 'a': 1}).items())))]
    assert compare_metadata(source, {'phiml': reordered}, [0], {})
    assert not compare_metadata(source, {'phiml': [dict(source[0], nested={'a': 1, 'b': (1.5, 2)})]}, [0], {})


def test_the_caches_are_compared_with_each_other_beyond_the_source(tiny_sim):
    source = [tiny_sim.metadata(0)]
    legacy, native = [dict(source[0], spatial_dims=['x', 'y'])], [dict(source[0])]
    hints = {'legacy': ['spatial_dims'], 'phiml': []}
    assert compare_metadata(source, {'legacy': legacy, 'phiml': native}, [0], hints)
    # a key both add beyond the source, a hint of each, must agree between them
    both = compare_metadata(source, {'legacy': [dict(legacy[0], tag=1)], 'phiml': [dict(native[0], tag=1.0)]}, [0],
                            {'legacy': ['spatial_dims', 'tag'], 'phiml': ['tag']})
    assert both.findings == [MetadataFinding('legacy vs phiml', 0, 'tag', 'type', "1.0 (float) instead of 1 (int)")]


def test_an_existing_cache_is_the_source_and_its_readers_hints_need_not_arrive(tmp_path):
    """A team's legacy cache migrated: its free-form metadata arrives with its types; the legacy reader's own layout
    keys are dropped, `fields` is added; a team's own native cache without the metadata is a finding per key."""
    from harness.data.existing import read_cache
    from harness.config import load_config
    team = tmp_path / 'team'
    for sim in SIMS:
        write_team_pt(team, sim)
    legacy = LegacyPipeline(team, 2)
    simulation, source, _ = read_cache(legacy, SIMS, load_config('burgers', ['data.rollout_steps=2']))
    migrate_cache(team, tmp_path / 'npz', legacy_cls=LegacyPipeline, native_cls=NativePipeline)
    native = NativePipeline(tmp_path / 'npz', 2)
    read = {'legacy': _read_back(legacy), 'phiml': _read_back(native)}
    assert sorted(read['phiml'].metadata[0]) == sorted({*TEAM_META, 'run', 'sim_index', 'n_frames', 'fields'})
    report = carried_metadata(simulation, SIMS, _makers(LegacyPipeline, NativePipeline), read,
                              source=(source.folder, 'legacy'))
    assert report, report.detail
    assert report.source == f"cache {team}"
    bare = tmp_path / 'bare'
    shutil.copytree(tmp_path / 'npz', bare)
    fields = {sim: native.read_fields(sim)[0] for sim in SIMS}
    for sim in SIMS:
        NativePipeline(bare, 2).write_fields(sim, fields[sim], {'fields': ['velocity']})
    read['phiml'] = _read_back(NativePipeline(bare, 2))
    report = carried_metadata(simulation, SIMS, _makers(LegacyPipeline, NativePipeline), read,
                              source=(source.folder, 'legacy'))
    assert not report and report.kind == 'metadata missing'
    assert [(f.sim, f.key) for f in report.findings[:7]] == [(0, k) for k in ('team', 'solver', 'dt', 'notes', 'run',
                                                                              'sim_index', 'n_frames')]
