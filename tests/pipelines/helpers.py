"""Materialise the corpus graph the way a backfill does: the knowledge graph, one run per dataset partition,
then one publish run, all in one (ephemeral) instance."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from medlvr.pipelines.corpus.assets import CORPUS_ASSETS
from medlvr.pipelines.corpus.checks import CORPUS_CHECKS
from medlvr.pipelines.corpus.qa_checks import QA_CHECKS

DATASET_ASSETS = dg.AssetSelection.assets("raw_dataset", "normalized_images", "roi_annotations", "qa_pairs")
PUBLISH = dg.AssetSelection.groups("corpus_publish")
MAIN_JOB_DATASETS = ["busi", "refuge"]  # the session's main job (conftest.py: main_job_home)


def materialize_corpus(resources: dict, datasets: list[str], instance: dg.DagsterInstance) -> list:
    everything = [*CORPUS_ASSETS, *CORPUS_CHECKS, *QA_CHECKS]
    results = [dg.materialize(everything, selection=dg.AssetSelection.assets("knowledge_graph"),
                              resources=resources, instance=instance)]
    for ds in datasets:
        results.append(dg.materialize(everything, selection=DATASET_ASSETS, partition_key=ds,
                                      resources=resources, instance=instance))
    results.append(dg.materialize(everything, selection=PUBLISH, resources=resources, instance=instance))
    return results


def check_evaluations(results) -> list:
    return [e for r in results for e in r.get_asset_check_evaluations()]


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are files to run, not package modules)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass in it looks its module up while the module executes
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base: str, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"{base}/graphql", json.dumps({"query": query, "variables": variables or {}}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@contextmanager
def dagster_server(cmd: list[str], port: int, env: dict, output=subprocess.DEVNULL, cwd: Path | None = None):
    """Start a Dagster webserver command (`dagster-webserver`, `dg dev`) listening on `port` in its own process
    group, yield its base URL once /server_info answers, and stop the whole group afterwards."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, f"{Path(cmd[0]).name} exited with {proc.returncode}"
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=5).close()
                break
            except OSError:
                assert time.time() < deadline, f"{Path(cmd[0]).name} did not answer"
                time.sleep(1)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def captured_output():
    """Everything written to file descriptors 1 and 2 (sys.stdout and sys.stderr included) inside the block, what
    `capfd` collects in a test: the yielded list holds it as one string once the block ends. For a fixture wider
    than one test, where `capfd` (function scope) cannot be used."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved, streams, text = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr), []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        # streams on descriptors 1 and 2 themselves, left open: a logging handler made in the block keeps one and
        # writes through it afterwards, to whatever the descriptor is then
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
                                  for fd in (1, 2))
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace"))
