"""`make dagster-dev` as a user runs it: the recipe's command (`make -n` prints it) serves the code location of
workspace.yaml, with Dagster's current command (`dg dev`), so no "superseded" warning."""

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.pipelines.helpers import dagster_server, free_port, graphql

REPO = Path(__file__).resolve().parents[2]
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


def _recipe() -> list[str]:
    out = subprocess.run(["make", "-n", "dagster-dev"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if " dev " in ln]
    return shlex.split(line)


def test_the_recipe_is_dg_dev_on_workspace_yaml():
    argv = _recipe()
    assert argv[0].startswith("DAGSTER_HOME=") and argv[0].endswith("/pipelines/dagster_home")
    assert Path(argv[1]).name == "dg" and argv[2:5] == ["dev", "-w", "workspace.yaml"]


@pytest.mark.slow
def test_make_dagster_dev_serves_the_code_location_without_a_supersession_warning(tmp_path):
    argv = _recipe()
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "pipelines" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    cmd = argv[1:]
    cmd[cmd.index("-p") + 1] = str(port)
    assert Path(cmd[0]).is_file(), f"{cmd[0]} is not installed (dagster-dg-cli, in the dev extra)"
    log = tmp_path / "dg-dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    with open(log, "wb") as out, dagster_server(cmd, port, env, output=out, cwd=REPO) as base:
        deadline = time.time() + 240
        while True:  # the code server loads the definitions after the webserver is up
            entries = graphql(base, LOCATIONS)["data"]["workspaceOrError"]["locationEntries"]
            if entries and entries[0]["loadStatus"] == "LOADED":
                break
            assert time.time() < deadline, entries
            time.sleep(1)
        assert [e["name"] for e in entries] == ["medlvr"]
    text = log.read_text()
    assert "supersede" not in text.lower(), text[-3000:]
