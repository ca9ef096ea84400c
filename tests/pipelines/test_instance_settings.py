"""A Dagster home without a dagster.yaml gets the project's instance settings (telemetry off, the gpu pool, run
retries); one that has its own keeps it. Truth: the checkout's pipelines/dagster_home/dagster.yaml, parsed here."""

from pathlib import Path

import yaml

from medlvr.pipelines.main_job import write_default_instance_settings

REPO = Path(__file__).resolve().parents[2]


def test_fresh_home_gets_the_project_settings(tmp_path):
    home = tmp_path / "fresh"
    home.mkdir()
    assert write_default_instance_settings(home) is True
    written = yaml.safe_load((home / "dagster.yaml").read_text())
    assert written == yaml.safe_load((REPO / "pipelines" / "dagster_home" / "dagster.yaml").read_text())
    assert written["telemetry"] == {"enabled": False}
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]  # no temporary file left behind


def test_a_home_with_its_own_settings_keeps_them(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    assert write_default_instance_settings(tmp_path) is False
    assert (tmp_path / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"
