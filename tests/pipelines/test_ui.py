"""`dagster dev` as a user sees it: scripts/ui_check.py (webserver up, one partition materialised through GraphQL,
its qa_pairs checks passed and thumbnails linked, asset-graph screenshot, only its own process group stopped).
Skipped without Debian's chromium."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.chromium
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_ui_check(tmp_path):
    out = tmp_path / "graph.png"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_check.py"), "--out", str(out),
                        "--partition", "hc18", "--timeout", "200"], cwd=ROOT, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded" in r.stdout and "stopped dagster dev" in r.stdout
    assert "qa_pairs checks" in r.stdout and "thumbnails linked" in r.stdout
    from PIL import Image

    with Image.open(out) as im:
        lo, hi = im.convert("L").getextrema()
        assert im.size[0] >= 1600 and hi - lo > 100  # not a blank page
