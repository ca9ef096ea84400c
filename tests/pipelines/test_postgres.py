"""Dagster as a team runs it, on a real PostgreSQL server (scripts/postgres_dev.py): the project's instance config
with Postgres storage, and the daemon, the webserver and the code server as separate processes, a backfill that
survives the daemon being killed. Skipped only where no PostgreSQL binaries exist (CI installs them: .ci/run)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.pipelines.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]
free_port, graphql = load_script("ui_check").free_port, load_script("ui_check").graphql  # the UI check's client

BIN = Path(sys.executable).parent
# Four small sample datasets: enough for two concurrent runs and a queue behind them on a 2-core machine.
PARTITIONS = ["busi", "hc18", "ph2", "bccd"]


def write_instance(home: Path, max_concurrent_runs: int) -> dict:
    """The project's dagster.yaml (pools, run queue, retries, monitoring) with its commented Postgres block switched
    on, as pipelines/README.md tells a team to do. The server comes from the DAGSTER_PG_* variables (the `pg_env`
    fixture: a fresh database per test)."""
    text = (ROOT / "pipelines" / "dagster_home" / "dagster.yaml").read_text()
    block = text[text.index("# storage:"):]
    config = yaml.safe_load(text)
    config.update(yaml.safe_load("\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))))
    config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return config


def test_project_instance_config_on_postgres(pg_env, tmp_path):
    assert write_instance(tmp_path / "home", 2)["storage"]["postgres"]["postgres_db"]["scheme"] == (
        "postgresql+psycopg2")
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
        instance.report_runless_asset_event(dg.AssetMaterialization("qa_pairs", partition="busi"))
        recs = instance.fetch_materializations(dg.AssetKey("qa_pairs"), limit=5).records
        assert [r.partition_key for r in recs] == ["busi"]
    # a second instance on the same database (another process of the team) sees the same history
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as other:
        assert other.fetch_materializations(dg.AssetKey("qa_pairs"), limit=5).records


def test_postgres_dev_script_start_stop(postgres):  # (the fixture: skipped where no PostgreSQL exists)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "postgres_dev.py"), "start"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    printed = dict(line.split("=", 1) for line in r.stdout.split())
    url, folder = printed["DAGSTER_PG_URL"], Path(printed["PG_DEV_DIR"])
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("select current_database()")
        assert cur.fetchone() == ("dagster",)
    conn.close()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "postgres_dev.py"), "stop", str(folder)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not folder.exists()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(url, connect_timeout=3).close()


def test_postgres_dev_script_stop_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()  # not made by `start`: nothing is stopped or deleted
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "postgres_dev.py"), "stop", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "postgres_dev.json" in r.stderr
    assert (tmp_path / "data").is_dir()


# --- the team deployment: three services on one Postgres instance ------------------------------------------------

BACKFILL = """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message }
  ... on InvalidSubsetError { message } ... on PartitionSetNotFoundError { message } } }"""
BACKFILL_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  __typename ... on PartitionBackfill { status } ... on PythonError { message } } }"""
RUNS = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
  ... on Runs { results { runId status startTime endTime tags { key value } } } } }"""
MATERIALIZATIONS = """query($p: [String!]) { assetOrError(assetKey: {path: ["qa_pairs"]}) { __typename
  ... on Asset { assetMaterializations(partitions: $p) { partition runId } } } }"""


def poll(what: str, fn, timeout: float, every: float = 2.0):
    """fn() until it returns something truthy; a test failure naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)


class Services:
    """The processes this test starts, each in its own process group (stopped by group id, nothing else)."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.procs = env, logs, {}

    def start(self, name: str, *cmd: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(list(cmd), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()
        return self.procs[name]

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for name in list(self.procs):
            try:
                os.killpg(self.procs[name].pid, signal.SIGTERM)
                self.procs[name].wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(self.procs[name].pid, signal.SIGKILL)  # run workers left in the group
            except ProcessLookupError:
                pass
            self.procs.pop(name).wait(timeout=20)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs.glob("*.log"))


def max_overlap(runs: list[dict]) -> int:
    """How many runs were in progress at once (from their recorded start/end times; no wall time asserted)."""
    edges = sorted([(r["startTime"], 1) for r in runs] + [(r["endTime"], -1) for r in runs],
                   key=lambda e: (e[0], e[1]))
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_backfill_survives_daemon_kill(pg_env, tmp_path):
    home = tmp_path / "dagster_home"
    write_instance(home, max_concurrent_runs=2)
    code_port, web_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
        "host": "127.0.0.1", "port": code_port, "location_name": "medlvr"}}]}))
    env = {**os.environ, **pg_env, "DAGSTER_HOME": str(home), "MEDLVR_HOME": str(tmp_path / "medlvr"),
           "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("MEDLVR_DATA_ROOT", None)
    logs = tmp_path / "logs"
    logs.mkdir()
    services = Services(env, logs)
    base = f"http://127.0.0.1:{web_port}"
    try:
        services.start("code-server", str(BIN / "dagster"), "code-server", "start", "-m",
                       "medlvr.pipelines.definitions", "-a", "defs", "-h", "127.0.0.1", "-p", str(code_port),
                       "--location-name", "medlvr")
        services.start("webserver", str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1",
                       "-p", str(web_port))
        services.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", str(workspace))

        def launch():
            try:
                res = graphql(base, BACKFILL, {"p": {
                    "selector": {"partitionSetName": "corpus_dataset_job_partition_set", "repositorySelector": {
                        "repositoryLocationName": "medlvr", "repositoryName": "__repository__"}},
                    "partitionNames": PARTITIONS,
                    # steps inside each run's process: the concurrency under test is between runs, and a process
                    # per step would triple the load on a 2-core machine
                    "runConfigData": {"execution": {"config": {"in_process": {}}}}}})["launchPartitionBackfill"]
            except (OSError, RuntimeError):  # webserver not up yet, or its GraphQL schema still loading
                return None
            # the code location may still be loading right after the webserver answers
            return res["backfillId"] if res["__typename"] == "LaunchBackfillSuccess" else None

        backfill_id = poll("the backfill to be accepted", launch, timeout=240)
        tags = [{"key": "dagster/backfill", "value": backfill_id}]

        def runs() -> list[dict]:
            return graphql(base, RUNS, {"tags": tags})["runsOrError"]["results"]

        def status() -> str:
            return graphql(base, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]

        # SIGKILL the daemon once a run is under way and the backfill is not finished
        poll("a backfill run to start", lambda: any(r["status"] in ("STARTED", "SUCCESS") for r in runs()), 300, 1)
        assert status() == "REQUESTED"
        services.kill("daemon")
        unfinished = [r for r in runs() if r["status"] not in ("SUCCESS", "FAILURE", "CANCELED")]
        services.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", str(workspace))

        final = poll("the backfill to complete", lambda: (s := status()) not in ("REQUESTED",) and s, 600, 3)
        assert final in ("COMPLETED", "COMPLETED_SUCCESS"), final
        done = runs()  # run history over GraphQL
        materialized = graphql(base, MATERIALIZATIONS, {"p": PARTITIONS})["assetOrError"]["assetMaterializations"]
    except BaseException:
        print(services.log_tail())
        raise
    finally:
        services.stop_all()

    by_partition = {}
    for r in done:
        part = next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition")
        by_partition.setdefault(part, []).append(r["status"])
    with dg.DagsterInstance.from_config(str(home)) as instance:  # why a run failed, should one have
        failures = {r["runId"]: [e.message for e in instance.all_logs(
            r["runId"], of_type=dg.DagsterEventType.RUN_FAILURE)] for r in done if r["status"] != "SUCCESS"}
    # every partition ran, and exactly one run of each finished successfully (none twice, none lost)
    assert sorted(by_partition) == sorted(PARTITIONS)
    assert all(s == ["SUCCESS"] for s in by_partition.values()), (by_partition, failures)
    assert unfinished, "the daemon was killed after the backfill's work was done: nothing was tested"
    # partitions ran side by side (the queue allows two at a time), never more than the limit
    assert max_overlap([r for r in done if r["status"] == "SUCCESS"]) == 2

    # asset history over GraphQL: one materialisation per partition, written by that partition's successful run
    succeeded = {r["runId"] for r in done if r["status"] == "SUCCESS"}
    assert sorted(m["partition"] for m in materialized) == sorted(PARTITIONS), (materialized, done)
    assert {m["runId"] for m in materialized} == succeeded
    # the blocking checks ran for every partition (read through a fresh instance on the same database)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for asset, check in (("normalized_images", "no_empty_images"), ("roi_annotations", "boxes_inside_images")):
            execs = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey(asset), check), limit=50)
            assert sorted(e.partition for e in execs) == sorted(PARTITIONS), (asset, check)
            assert {e.run_id for e in execs} == succeeded
