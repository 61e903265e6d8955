import hashlib
import json

import pytest

from harness.config import load_config
from harness.errors import CacheError
from harness.cache.manifest import MANIFEST_NAME, FieldRecord, FileRecord, Manifest, cache_kind, config_digest, record_file, sha256_file, sims_on_disk
from built_caches import built  # noqa: F401  (fixture)
from conftest import KINDS, PIPELINE_IDS, TINY


@pytest.mark.parametrize('name, dims, shape, items', [
    ('legacy', ('channel', 'time', 'x', 'y'), (2, 9, 16, 16), ('x', 'y')),
    ('phiml', ('time', 'x', 'y', 'vector'), (9, 16, 16, 2), ('x', 'y')),
], ids=PIPELINE_IDS)
def test_records_describe_each_file(built, tiny_sim, tiny_config, name, dims, shape, items):
    manifest = Manifest.load(built / name)
    assert manifest.pipeline == name
    assert sorted(manifest.files) == [KINDS[name].file_name(s) for s in tiny_config.all_sims]
    record = manifest.files[KINDS[name].file_name(2)]
    path = built / name / record.name
    assert (record.sim, record.size) == (2, path.stat().st_size)
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.fields == {'velocity': FieldRecord(dims, shape, 'float32', items)}
    assert record.fields['velocity'].n_frames == 9 and record.fields['velocity'].resolution == [16, 16]
    assert record.config_digest == config_digest(tiny_config) and record.source is None
    expected_meta = tiny_sim.metadata(2)
    if name == 'legacy':
        expected_meta = {**expected_meta, 'spatial_dims': ['x', 'y'], 'field_channels': {'velocity': ['x', 'y']}}
    assert record.metadata == expected_meta


def test_json_round_trip(built, tmp_path):
    manifest = Manifest.load(built / 'phiml')
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]  # the temporary file was renamed, nothing left
    text = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert text['format_version'] == 1 and text['pipeline'] == 'phiml' and text['writer'] == 'phiml-migration-harness'
    assert text['pending'] == []


def test_no_manifest_is_none(tmp_path):
    assert Manifest.load(tmp_path) is None


OURS = '"writer": "phiml-migration-harness", '


@pytest.mark.parametrize('content, words', [
    ('{"format_version": 1, "pipeline": "phiml", "files": {"sim', 'JSONDecodeError'),
    ('{' + OURS + '"format_version": 7, "pipeline": "phiml", "files": {}}', 'format_version 7, expected 1'),
    ('{' + OURS + '"format_version": 1, "pipeline": 7, "files": {}}', "pipeline 7, expected the name of a pipeline"),
    ('{' + OURS + '"format_version": 1, "pipeline": "phiml", "files": {"a": {"name": "a"}}}', 'KeyError'),
    ('{' + OURS + '"format_version": 1, "pipeline": "phiml", "files": {}, "pending": "sim_000000.npz"}',
     "pending 'sim_000000.npz', expected a list of file names"),
    ('[1, 2]', "not a cache manifest of the harness (list, expected writer 'phiml-migration-harness'"),
    ('{"format_version": 1, "pipeline": "phiml", "files": {}}',  # a manifest of an earlier harness version
     "not a cache manifest of the harness (writer None, expected writer 'phiml-migration-harness'; an earlier version"),
    ('{"dataset": "ocean-2024", "files": ["sim_000000.npz"]}',  # a team's own manifest.json
     "not a cache manifest of the harness (writer None, expected writer 'phiml-migration-harness'"),
], ids=['truncated', 'version', 'pipeline', 'record', 'pending', 'not-a-dict', 'no-writer', 'a-teams-own'])
def test_unreadable_manifest_named(tmp_path, content, words):
    (tmp_path / MANIFEST_NAME).write_text(content)
    with pytest.raises(CacheError) as info:
        Manifest.load(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(info.value) and words in str(info.value)


def test_sha256_file_reads_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / 'f').write_bytes(data)
    assert sha256_file(tmp_path / 'f', chunk=1000) == hashlib.sha256(data).hexdigest()


def test_config_digest_follows_the_data():
    base = load_config('burgers', TINY)
    assert config_digest(base) == config_digest(load_config('burgers', TINY))
    assert config_digest(base) == config_digest(load_config('burgers', [*TINY, 'trainer.epochs=9', 'data.batch_size=2']))
    for change in ('seed=1', 'sim.viscosity=0.01', 'sim.resolution=[8,8]', 'data.n_val_sims=2', 'sim.noise_scale=0.2'):
        assert config_digest(base) != config_digest(load_config('burgers', [*TINY, change])), change


def test_sims_on_disk(tmp_path):
    for name in ('sim_000003.npz', 'sim_000001.npz', 'sim_1.npz', 'sim_abcdef.npz', 'sim_000002.pt',
                 '.sim_000004.npz.x1y2.tmp.npz', 'manifest.json'):
        (tmp_path / name).write_bytes(b'x')
    assert sims_on_disk(tmp_path, KINDS['phiml']) == [1, 3]
    assert sims_on_disk(tmp_path, KINDS['legacy']) == [2]


def test_record_file_refuses_a_file_that_does_not_load(tmp_path):
    (tmp_path / 'sim_000000.npz').write_bytes(b'not a zip')
    with pytest.raises(CacheError, match='sim_000000.npz: not a readable .npz file'):
        record_file(KINDS['phiml'], tmp_path, 0)


def test_a_kind_comes_from_a_pipeline_class():
    with pytest.raises(TypeError, match=r"^`pipeline` \(='torch'\) must be a pipeline class or instance"):
        cache_kind('torch')
    assert KINDS['phiml'].file_name(7) == 'sim_000007.npz' and KINDS['legacy'].sim_of('sim_000012.pt') == 12
    assert KINDS['legacy'].sim_of('sim_12.pt') is None and KINDS['legacy'].sim_of('sim_000012.npz') is None


def test_file_record_signature():
    record = FileRecord('sim_000000.npz', 0, 1, 'x', {'velocity': FieldRecord(('time', 'x'), (5, 8), 'float32')}, {})
    assert record.signature == (('velocity', 5, (8,)),)
