"""`make clean-demo` forgets the main job (outputs and run history) and keeps the instance's configuration."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_clean_demo_keeps_only_the_instance_config(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    home = tmp_path / "pipelines" / "dagster_home"
    (home / "medlvr" / "runs").mkdir(parents=True)
    (home / "history" / "runs.db").parent.mkdir()
    (home / "history" / "runs.db").write_text("x")
    (home / ".telemetry").mkdir()
    for name in ("dagster.yaml", ".gitignore"):
        (home / name).write_text(name)
    subprocess.run(["make", "-s", "clean-demo"], cwd=tmp_path, check=True, capture_output=True)
    assert sorted(p.name for p in home.iterdir()) == [".gitignore", "dagster.yaml"]
