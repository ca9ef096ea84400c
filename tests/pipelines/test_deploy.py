"""deploy/: the cluster instance config, the Helm values and the Dockerfiles, checked as far as this machine allows.

* deploy/dagster.yaml: validated against Dagster's own instance schema (`dagster_instance_config`, unknown keys
  are errors), loaded into an instance against a real PostgreSQL server, and its K8sRunLauncher config validated
  with dagster-k8s's schema (dagster-k8s is in the dev extra).
* deploy/values.yaml: helm is not installed here (and the chart is not vendored), so no `helm template`; the values
  are parsed and checked against deploy/dagster.yaml (same queue, retries, monitoring, secrets, run resources) and
  the code location they name is imported.
* deploy/Dockerfile(.gpu): no docker daemon here, so no build; the files they copy exist, the extras they install
  exist, torch is the Makefile's pin, and the served module is the one the Helm values name.
"""

import importlib
import re
import shlex
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


@pytest.fixture
def instance_env(monkeypatch, pg_env):
    monkeypatch.setenv("DAGSTER_K8S_NAMESPACE", "medlvr")


def _instance_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def test_deploy_instance_yaml_validates_and_loads_on_postgres(instance_env, tmp_path):
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # raises on any key Dagster's schema does not know
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    # load it for real, except the run launcher: K8sRunLauncher connects to a cluster when constructed
    from dagster_postgres import PostgresRunStorage

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 8
        assert instance.run_retries_max_retries == 1 and instance.run_monitoring_enabled
        instance.report_runless_asset_event(dg.AssetMaterialization("corpus_card"))
        assert instance.fetch_materializations(dg.AssetKey("corpus_card"), limit=1).records


def test_deploy_k8s_launcher_config_validates(instance_env):
    k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s is in the dev extra (pip install '.[k8s]')")
    launcher = _instance_yaml()["run_launcher"]
    assert launcher["module"] == "dagster_k8s" and hasattr(k8s, launcher["class"])
    result = validate_config(k8s.K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, [e.message for e in result.errors]
    # the executor the notes name exists with the config keys they mention
    fields = k8s.k8s_job_executor.config_schema.as_field().config_type.fields
    assert {"max_concurrent", "step_k8s_config", "per_step_k8s_config"} <= set(fields)


def test_helm_values_agree_with_the_instance_yaml():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    inst = _instance_yaml()
    launcher = inst["run_launcher"]["config"]
    assert values["runLauncher"]["type"] == inst["run_launcher"]["class"]
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert k8s["runK8sConfig"]["containerConfig"] == launcher["run_k8s_config"]["container_config"]
    daemon = values["dagsterDaemon"]
    assert (daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"]
            == inst["concurrency"]["runs"]["max_concurrent_runs"])
    assert daemon["runRetries"]["maxRetries"] == inst["run_retries"]["max_retries"]
    assert daemon["runMonitoring"]["startTimeoutSeconds"] == inst["run_monitoring"]["start_timeout_seconds"]
    assert values["postgresql"]["enabled"] is False and values["global"]["postgresqlSecretName"] == (
        launcher["postgres_password_secret"])
    # the code location the chart serves is this project's Definitions
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    module, attr = args[args.index("-m") + 1], args[args.index("-a") + 1]
    assert isinstance(getattr(importlib.import_module(module), attr), dg.Definitions)


def _dockerfile(name: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_copy_existing_files_and_serve_the_chart_location(name):
    import tomllib

    steps = _dockerfile(name)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for op, arg in steps:
        if op == "COPY":
            for src in shlex.split(arg)[:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src} (build context: the repository root)"
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    makefile_torch = re.search(r"torch==[\d.]+", (ROOT / "Makefile").read_text()).group(0)
    assert makefile_torch in runs
    if name == "Dockerfile":  # CPU image: torch from the CPU index, installed before the project
        assert "download.pytorch.org/whl/cpu" in runs and runs.index("torch==") < runs.index("pip install '.[")
    extras = re.search(r"pip install '\.\[([\w,]+)\]'", runs).group(1).split(",")
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"]), extras
    assert {"postgres", "k8s"} <= set(extras)
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    cmd = yaml.safe_load(dict(steps)["CMD"])
    assert cmd[:3] == ["dagster", "api", "grpc"] and cmd[-4:] == deployment["dagsterApiGrpcArgs"]
    assert cmd[cmd.index("-p") + 1] == str(deployment["port"])
