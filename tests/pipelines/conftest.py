import uuid
import warnings

import dagster as dg
import pytest

with warnings.catch_warnings():  # partitioned asset checks are a 1.13 preview feature (they work)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    import medlvr.pipelines.definitions  # noqa: F401

from tests.pipelines.helpers import load_script  # noqa: E402

postgres_dev = load_script("postgres_dev")


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
