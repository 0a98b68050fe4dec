"""report.html in a real browser: the answer is on the first screen, every image loads, no sideways scroll.

Headless Chromium opens a copy of the report with a probe script appended (the report itself has
no scripts) at 1280x1000 and reads the layout back through --dump-dom.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_folder

from lbbench.report import write_report

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
PROBE = """
<script>
window.addEventListener('load', () => {
  const rect = (sel) => { const e = document.querySelector(sel); return e ? e.getBoundingClientRect() : null; };
  const v = rect('.verdict'), f = rect('img[alt="What the clients got"]');
  const imgs = [...document.images];
  const out = {verdict_bottom: v && v.bottom, figure_top: f && f.top, figure_bottom: f && f.bottom,
               images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
               scroll_width: document.documentElement.scrollWidth, inner_width: window.innerWidth,
               inner_height: window.innerHeight};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def probe(html: Path, tmp_path: Path) -> dict[str, float]:
    assert CHROMIUM is not None
    page = tmp_path / "probe.html"
    page.write_text(html.read_text() + PROBE)
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1000",
         "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=110, check=False,
    )
    found = re.search(r'<pre id="probe">([^<]*)</pre>', proc.stdout)
    assert found, proc.stderr[-2000:]
    data: dict[str, float] = json.loads(found.group(1))
    return data


@pytest.mark.timeout(600)  # a synthetic folder of six front ends, its report and a browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (installed by .ci/run where apt exists)")
@pytest.mark.parametrize("frontends", [("userspace-dnat", "l7-proxy"),
                                       ("userspace-dnat", "kernel-nftables", "kernel-iptables", "l7-proxy",
                                        "haproxy", "nginx")])
def test_verdict_and_headline_figure_on_the_first_screen(tmp_path: Path, frontends: tuple[str, ...]) -> None:
    folder = make_folder(tmp_path, frontends=frontends)
    html = write_report(folder).html
    got = probe(html, tmp_path)
    screen = got["inner_height"]
    assert got["verdict_bottom"] is not None and got["verdict_bottom"] <= screen, got
    assert got["figure_top"] is not None and got["figure_top"] < screen * 0.7, got  # most of it in view
    assert got["images"] >= 5 and got["loaded"] == got["images"], got
    assert got["scroll_width"] <= got["inner_width"], got  # no horizontal scroll
