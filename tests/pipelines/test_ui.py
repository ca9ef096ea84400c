"""`dagster dev` as a user sees it: scripts/ui_check.py (webserver up; one partition, the corpus card and a small
evaluation report materialised through GraphQL; the qa_pairs checks passed, thumbnails linked; the contact sheets,
the card, its sample images and the report's tables render in headless Chromium; asset-graph screenshot; only its
own process group stopped). Skipped without Debian's chromium."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
RENDERED = ("normalized_images.contact_sheet", "qa_pairs.contact_sheet", "corpus_card.card",
            "corpus_card.sample_images", "evaluation_report.tables")


@pytest.mark.chromium
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_ui_check(tmp_path):
    out, shots = tmp_path / "graph.png", tmp_path / "shots"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_check.py"), "--out", str(out), "--shots",
                        str(shots), "--partition", "hc18", "--timeout", "400"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded" in r.stdout and "stopped dagster dev" in r.stdout
    assert "qa_pairs checks" in r.stdout and "thumbnails linked" in r.stdout
    assert "rendered in the UI: " + ", ".join(RENDERED) in r.stdout
    from PIL import Image

    for png in [out, *(shots / f"{name.replace('.', '-')}.png" for name in RENDERED)]:
        with Image.open(png) as im:
            lo, hi = im.convert("L").getextrema()
            assert im.size[0] >= 1600 and hi - lo > 100, png  # not a blank page
