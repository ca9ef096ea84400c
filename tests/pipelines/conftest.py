import warnings

import dagster as dg
import pytest

with warnings.catch_warnings():  # partitioned asset checks are a 1.13 preview feature (they work)
    warnings.simplefilter("ignore", dg.PreviewWarning)
    import medlvr.pipelines.definitions  # noqa: F401


def pytest_collection_modifyitems(items):
    # dagster 1.13 itself triggers these on every run; they say nothing about this project.
    for item in items:
        if "tests/pipelines" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::pydantic.PydanticDeprecatedSince20"))
            item.add_marker(pytest.mark.filterwarnings("ignore::dagster.PreviewWarning"))
