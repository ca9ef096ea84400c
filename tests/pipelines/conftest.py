import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

with warnings.catch_warnings():  # partitioned asset checks are a 1.13 preview feature (they work)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    import medlvr.pipelines.definitions  # noqa: F401

from tests.pipelines.helpers import MAIN_JOB_DATASETS, captured_output, load_script  # noqa: E402

postgres_dev = load_script("postgres_dev")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class MainJobHome:
    home: Path  # the DAGSTER_HOME (a copy of the project's dagster.yaml); the MedLVR home is its medlvr/
    first: dict  # what run_main returned for the first run
    lines: list[str]  # the console lines that run logged
    output: str  # everything else it wrote to stdout and stderr


@pytest.fixture(scope="session")
def main_job_home(tmp_path_factory) -> MainJobHome:
    """The main job run once on MAIN_JOB_DATASETS into a fresh Dagster home: the one whole main job of the session
    in this folder. tests/pipelines/test_main_job.py checks this run and runs the job again in the home;
    test_ui.py shows a copy of the home in the Dagster UI. DAGSTER_HOME and MEDLVR_HOME are as before on return."""
    from medlvr.pipelines.main_job import run_main

    home = tmp_path_factory.mktemp("main_job_home")
    shutil.copy(REPO / "pipelines" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    old = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "MEDLVR_HOME")}
    os.environ.pop("MEDLVR_HOME", None)
    lines: list[str] = []
    try:
        with captured_output() as output:
            first = run_main(home, MAIN_JOB_DATASETS, log=lines.append)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return MainJobHome(home, first, lines, output[0])


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (scripts/postgres_dev.py) for the whole session; skipped only where no
    PostgreSQL binaries exist (CI installs Debian's postgresql: .ci/run)."""
    if postgres_dev.find_bin_dir() is None:
        pytest.skip("needs PostgreSQL binaries (Debian: apt-get install postgresql)")
    server = postgres_dev.start()
    try:
        yield server
    finally:
        postgres_dev.stop(server.folder)


def pytest_collection_modifyitems(items):
    # dagster 1.13 itself triggers these on every run; they say nothing about this project.
    for item in items:
        if "tests/pipelines" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::pydantic.PydanticDeprecatedSince20"))
            item.add_marker(pytest.mark.filterwarnings("ignore::dagster.PreviewWarning"))


@pytest.fixture
def pg_env(postgres, monkeypatch) -> dict:
    """A fresh database on the session's server for one test (nothing left by another test), as the DAGSTER_PG_*
    variables that the project's and deploy/'s dagster.yaml read; also set in this process's environment."""
    name = f"t{uuid.uuid4().hex[:12]}"
    postgres_dev.create_database(postgres, name)
    env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port), "DAGSTER_PG_USER": "postgres",
           "DAGSTER_PG_PASSWORD": "unused-with-trust-auth", "DAGSTER_PG_DB": name}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
