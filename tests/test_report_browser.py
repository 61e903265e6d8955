"""The report, seen as a person sees it: headless Chromium opens `index.html` of a compare run, every image loads, the
verdict is on the first screen, and a screenshot is saved beside the report."""
import json

import pytest

from harness.config import load_config, quick_overrides
from harness.report.browser import find_browser, look_at_report
from harness.run import run_compare
from legacy import LegacyPipeline
from phiml_native import NativePipeline

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    find_browser() is None, reason="no Chromium on PATH (nor $CHROMIUM): .ci/run installs Debian's chromium as root "
                                   "with apt-get install -y chromium; where that cannot be done this test is skipped")]


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('report')
    config = load_config('burgers1d', [*quick_overrides('burgers1d'), 'trainer.epochs=1', 'compare.timing_repeats=1',
                                       'compare.timing_warmup=0'])
    summary = run_compare(config, out, legacy_cls=LegacyPipeline, native_cls=NativePipeline, progress=False)
    return out, summary


def test_every_image_loads_and_the_verdict_is_at_the_top(report):
    out, summary = report
    view = look_at_report(out / 'index.html')
    assert view.failed == [] and view.broken_images == []
    assert [i['src'] for i in view.images] == ['physics.png', 'timings.png', 'loss_curves.png']
    assert all(i['naturalWidth'] > 0 for i in view.images)
    assert view.verdict_at_top, view.verdict
    assert view.verdict['text'].startswith(f"Verdict: {summary['verdict'].upper()} ")
    assert view.title.startswith(f"burgers1d: {summary['verdict'].upper()}")
    assert view.screenshot == (out / 'screenshot.png').resolve()
    assert view.screenshot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and view.screenshot.stat().st_size > 10_000
    assert sorted(p.name for p in out.glob('.probe-*')) == []  # the probe copy is gone
    assert json.loads((out / 'summary.json').read_text())['verdict'] == summary['verdict']
    html = (out / 'index.html').read_text()
    assert ('<h2 id="flip">Flip the default</h2>' in html) == (summary['verdict'] == 'go')  # the report's last section
    assert html.rstrip().endswith('harness/configs/burgers1d.yaml</code></p>\n</body></html>') == (summary['verdict'] == 'go')


def test_a_missing_image_and_a_hidden_verdict_are_seen(tmp_path, report):
    out, _ = report
    (tmp_path / 'ok.png').write_bytes((out / 'timings.png').read_bytes())
    (tmp_path / 'index.html').write_text(
        '<!DOCTYPE html><html><head><title>t</title></head><body><div style="height:3000px"></div>'
        '<p class="verdict">Verdict: GO</p><img src="ok.png"><img src="missing.png"></body></html>')
    view = look_at_report(tmp_path / 'index.html', tmp_path / 'shot.png')
    assert view.broken_images == ['missing.png'] and len(view.failed) == 1 and view.failed[0].endswith('/missing.png')
    assert view.verdict['visible'] and not view.verdict_at_top  # below the first screen
    assert (tmp_path / 'shot.png').is_file()
