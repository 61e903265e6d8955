"""The report as a person sees it: headless Chromium opens `index.html`, and we read back what it shows.

Chromium's own `--dump-dom` and `--screenshot` do it without another dependency. A probe copy of the page (beside it,
so relative image paths resolve; removed afterwards) carries a script that records every resource that failed to
load, each image's natural width, and where the verdict is; `--dump-dom` hands back the page with that record in it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError

logger = logging.getLogger(__name__)
CANDIDATES = ('chromium', 'chromium-browser', 'google-chrome', 'chrome')
FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync', '--hide-scrollbars')
WINDOW = (1280, 1600)
PROBE = """<script>
window.__failed = [];
window.addEventListener('error', function (e) {
  var t = e.target; if (t && t !== window) { window.__failed.push(t.src || t.href || t.tagName); }
}, true);
window.addEventListener('load', function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {src: img.getAttribute('src'), complete: img.complete, naturalWidth: img.naturalWidth};
  });
  var verdict = document.querySelector('.verdict');
  var box = verdict ? verdict.getBoundingClientRect() : null;
  var style = verdict ? getComputedStyle(verdict) : null;
  var record = {failed: window.__failed, images: images, title: document.title, viewport: window.innerHeight,
                verdict: verdict ? {text: verdict.innerText, top: box.top, height: box.height,
                                    visible: style.display !== 'none' && style.visibility !== 'hidden' && box.height > 0}
                                 : null};
  var pre = document.createElement('pre'); pre.id = '__report_probe';
  pre.textContent = JSON.stringify(record); document.body.appendChild(pre);
});
</script>"""


@dataclass
class ReportView:
    """What the browser showed.

    Attributes:
        images: `{'src', 'complete', 'naturalWidth'}` per `<img>`, in page order.
        failed: URLs of resources that failed to load.
        verdict: `{'text', 'top', 'height', 'visible'}` of the `.verdict` element (None if absent); `top` in CSS px.
        viewport: The window's inner height in CSS px.
        title: The page title.
        screenshot: The PNG written beside the report.
    """
    images: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    verdict: dict | None = None
    viewport: int = 0
    title: str = ''
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[str]:
        return [i['src'] for i in self.images if not (i['complete'] and i['naturalWidth'] > 0)]

    @property
    def verdict_at_top(self) -> bool:
        """The verdict is rendered, and within the first screen without scrolling."""
        v = self.verdict
        return bool(v and v['visible'] and 0 <= v['top'] and v['top'] + v['height'] <= self.viewport)


def find_browser() -> str | None:
    """The path of a Chromium-like browser on PATH (or `$CHROMIUM`), or None."""
    explicit = os.environ.get('CHROMIUM')
    if explicit and shutil.which(explicit):
        return shutil.which(explicit)
    return next((shutil.which(name) for name in CANDIDATES if shutil.which(name)), None)


def look_at_report(index: Path, screenshot: Path | None = None, *, browser: str | None = None,
                   timeout: float = 60.0) -> ReportView:
    """Opens `index` in headless Chromium, records what loaded and where the verdict is, and saves a screenshot.

    Args:
        index: The report's `index.html`.
        screenshot: Where to save the PNG (default: `screenshot.png` beside `index`).
        browser: The browser executable (default: `find_browser()`).
        timeout: Seconds per browser run.

    Raises:
        HarnessError: no browser, `index` missing, or the browser failed or returned no record.
    """
    index = Path(index).resolve()
    if not index.is_file():
        raise HarnessError(f"{index}: no report to look at (expected the index.html of a compare run)")
    browser = browser or find_browser()
    if browser is None:
        raise HarnessError(f"no Chromium found (looked for {list(CANDIDATES)} on PATH and $CHROMIUM)")
    screenshot = Path(screenshot or index.with_name('screenshot.png')).resolve()
    html = index.read_text(encoding='utf-8')
    probed, count = re.subn(r'<head>', '<head>' + PROBE, html, count=1)
    if not count:
        raise HarnessError(f"{index}: has no <head> to put the probe into")
    fd, probe_name = tempfile.mkstemp(prefix='.probe-', suffix='.html', dir=index.parent)
    probe = Path(probe_name)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(probed)
        dom = _run(browser, ['--dump-dom', '--virtual-time-budget=5000', probe.as_uri()], timeout).stdout
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'<pre id="__report_probe">(.*?)</pre>', dom, re.S)
    if not match:
        raise HarnessError(f"{index}: the browser returned no record of the page ({len(dom)} characters of DOM)")
    record = json.loads(_unescape(match.group(1)))
    _run(browser, [f'--screenshot={screenshot}', index.as_uri()], timeout)
    if not screenshot.is_file():
        raise HarnessError(f"{browser} wrote no screenshot to {screenshot}")
    return ReportView(record['images'], record['failed'], record['verdict'], record['viewport'], record['title'],
                      screenshot)


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix='chromium-profile-') as profile:
        command = [browser, *FLAGS, f'--user-data-dir={profile}', f'--window-size={WINDOW[0]},{WINDOW[1]}', *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{browser} did not finish within {timeout:g} s: {' '.join(args)}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [''])[-1][:300]
        raise HarnessError(f"{browser} exited with {done.returncode}: {tail}")
    return done


def _unescape(text: str) -> str:
    return text.replace('&lt;', '<').replace('&gt;', '>').replace('&quot;', '"').replace('&#39;', "'").replace('&amp;', '&')
