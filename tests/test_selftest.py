"""The self-test: every injected bug caught with the expected diagnosis; the clean pipeline passes."""
import pytest

from harness.cli import selftest as selftest_cli
from harness.selftest import run as selftest
from legacy import LegacyPipeline
from phiml_native import NativePipeline
from harness.selftest.bugs import CATALOGUE


def test_catalogue_size():
    assert len(CATALOGUE) >= 8
    assert {'x and y transposed', 'vector components swapped', 'targets shifted by one frame', 'rollout one step short',
            'data upcast to float64', 'last partial batch dropped', 'different shuffle order',
            'data normalised twice'} <= set(CATALOGUE)


def test_selftest_passes(tiny_config, tiny_sim, cache_dirs):
    result = selftest.run_selftest(tiny_config, LegacyPipeline, NativePipeline, tiny_sim, cache_dirs['legacy'], cache_dirs['phiml'])
    assert result, result.table()
    rows = {r.bug: r for r in result.rows}
    assert not rows['none (clean native pipeline)'].caught
    assert all(r.caught for name, r in rows.items() if not name.startswith('none'))
    assert rows['x and y transposed'].kind == 'layout'
    assert 'batches equal' in rows['x and y transposed'].check


def test_a_missed_bug_fails_the_selftest():
    row = selftest.SelftestRow('some bug', caught=False, check='-', diagnosis='', kind='none', expected_kind='layout')
    assert not row.ok and not selftest.SelftestResult([row])
    clean_flagged = selftest.SelftestRow('none', caught=True, check='x', diagnosis='', kind='layout', expected_kind='none')
    assert not clean_flagged.ok


@pytest.mark.slow
def test_cli_quick(capsys):
    assert selftest_cli.main(['burgers', '--quick']) == 0
    out = capsys.readouterr().out
    assert 'self-test: PASSED' in out and 'x and y transposed' in out
