"""The code location loads, has the expected graph, and keeps torch/transformers out of module level."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from medlvr.corpus.catalog import load_catalog
from tests.catalog_count import N_DATASETS

ROOT = Path(__file__).resolve().parents[2]

GROUPS = {"corpus_ingest": {"raw_dataset", "normalized_images", "roi_annotations"},
          "corpus_qa": {"knowledge_graph", "qa_pairs"},
          "corpus_publish": {"dedup_groups", "decontamination", "splits", "corpus_shards", "corpus_card"},
          "training": {"roi_sft_checkpoint", "vlpo_checkpoint"},
          "evaluation": {"evaluation_predictions", "evaluation_report"}}


def test_definitions_load():
    from medlvr.pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    by_group = {}
    for key in graph.get_all_asset_keys():
        by_group.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    assert by_group == GROUPS
    parts = graph.get(dg.AssetKey("qa_pairs")).partitions_def
    assert parts.get_partition_keys() == list(load_catalog()) and len(parts.get_partition_keys()) == N_DATASETS
    assert graph.get(dg.AssetKey("corpus_shards")).partitions_def is None
    for job in ("knowledge_graph_job", "corpus_dataset_job", "corpus_publish_job", "training_job",
                "evaluation_predictions_job", "evaluation_report_job"):
        assert defs.resolve_job_def(job)
    assert defs.resolve_schedule_def("weekly_corpus_rebuild").default_status == dg.DefaultScheduleStatus.STOPPED
    for name in ("raw_dataset_sensor", "corpus_publish_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.STOPPED
    checks = {k.name for k in graph.asset_check_keys}
    assert {"boxes_inside_images", "objects_reconcile", "no_empty_images", "rejects_below_share", "no_patient_or_group_across_splits",
            "shard_checksums_match_manifest", "zero_decontamination_matches_left", "qa_pairs_schema",
            "qa_answer_among_options", "qa_boxes_inside_images", "roi_sft_checkpoint_metrics_finite",
            "roi_sft_checkpoint_loads", "vlpo_checkpoint_metrics_finite", "vlpo_checkpoint_loads",
            "parse_fail_rate_below_threshold"} <= checks
    assert all(graph.get_check_spec(k).blocking for k in graph.asset_check_keys)
    from medlvr.pipelines.corpus.assets import corpus_shards, ingest_dataset_assets, raw_dataset

    for a in (raw_dataset, ingest_dataset_assets, corpus_shards):  # I/O-bound: retried with backoff
        assert a.op.retry_policy.max_retries >= 1 and a.op.retry_policy.backoff == dg.Backoff.EXPONENTIAL


def test_no_ml_imports_at_module_level():
    code = ("import sys, medlvr.pipelines.definitions; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_workspace_points_to_definitions():
    ws = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = ws["load_from"]
    assert entry["python_module"]["module_name"] == "medlvr.pipelines.definitions"


def test_definitions_validate_cli(tmp_path):
    exe = Path(sys.executable).with_name("dagster")
    r = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT, capture_output=True,
                       text=True, env={"PATH": str(exe.parent), "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "All code locations passed validation" in r.stdout + r.stderr


def test_instance_config_gpu_pool_limit_one():
    cfg = yaml.safe_load((ROOT / "pipelines" / "dagster_home" / "dagster.yaml").read_text())
    with dg.instance_for_test(overrides=cfg) as instance:
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert info.limit == 1
