import importlib.util
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

with warnings.catch_warnings():  # partitioned asset checks are a 1.13 preview feature (they work)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    import medlvr.pipelines.definitions  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
# scripts/postgres_dev.py is a script, not a package module: load it from its file
_spec = importlib.util.spec_from_file_location("postgres_dev", ROOT / "scripts" / "postgres_dev.py")
postgres_dev = importlib.util.module_from_spec(_spec)
sys.modules["postgres_dev"] = postgres_dev  # its dataclass looks its module up while the module executes
_spec.loader.exec_module(postgres_dev)


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
