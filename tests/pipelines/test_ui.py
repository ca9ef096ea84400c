"""`dagster dev` as a user sees it: scripts/ui_check.py (webserver up; one partition materialised through GraphQL;
the qa_pairs checks passed, thumbnails linked; the contact sheets, the corpus card, its sample images and the
evaluation report's tables render in headless Chromium; asset-graph screenshot; only its own process group stopped).
The card and report are the main job's: the script runs with `--dagster-home` on a copy of the session's main-job
home (tests/pipelines/conftest.py), so the session materialises them once. Skipped without Debian's chromium."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.helpers import MAIN_JOB_DATASETS

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
RENDERED = ("normalized_images.contact_sheet", "qa_pairs.contact_sheet", "corpus_card.card",
            "corpus_card.sample_images", "evaluation_report.tables")


@pytest.mark.chromium
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_ui_check(tmp_path, main_job_home):
    out, shots, home = tmp_path / "graph.png", tmp_path / "shots", tmp_path / "dagster_home"
    shutil.copytree(main_job_home.home, home)  # the run it launches goes to the copy: the session's home unchanged
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ui_check.py"), "--out", str(out), "--shots",
                        str(shots), "--partition", MAIN_JOB_DATASETS[0], "--timeout", "400",
                        "--dagster-home", str(home)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded" in r.stdout and "stopped dagster dev" in r.stdout
    assert "qa_pairs checks" in r.stdout and "thumbnails linked" in r.stdout
    assert "rendered in the UI: " + ", ".join(RENDERED) in r.stdout
    from PIL import Image

    for png in [out, *(shots / f"{name.replace('.', '-')}.png" for name in RENDERED)]:
        with Image.open(png) as im:
            lo, hi = im.convert("L").getextrema()
            assert im.size[0] >= 1600 and hi - lo > 100, png  # not a blank page
