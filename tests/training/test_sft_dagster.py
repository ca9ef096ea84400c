"""`roi_sft_checkpoint` materialises through Dagster Pipes on the tiny config (metadata: final metrics and the
checkpoint path), and a trainer failure fails the asset with the trainer's error visible."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg  # noqa: E402
import pytest  # noqa: E402

from medlvr.pipelines.corpus.resources import CorpusStorage  # noqa: E402
from medlvr.pipelines.training.logs import trainer_pipes_client  # noqa: E402
from medlvr.corpus.sample_corpus import build_sample_corpus  # noqa: E402
from medlvr.pipelines.training.assets import (RoiSftConfig, roi_sft_checkpoint, trainer_command,  # noqa: E402
                                               trainer_overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_sample_corpus(tmp_path_factory.getbasetemp() / "sft_corpus")


def _materialize(corpus, out_dir, overrides):
    cfg = {"ops": {"roi_sft_checkpoint": {"config": {"overrides": [f"run.out_dir={out_dir}", *overrides]}}}}
    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize([roi_sft_checkpoint], run_config=cfg, raise_on_error=False, instance=instance,
                         resources={"storage": CorpusStorage(url=str(corpus)),
                                    "pipes_subprocess_client": trainer_pipes_client()})
    return res, [e.user_message for e in instance.all_logs(res.run_id)]


def test_asset_materialises_with_metrics_and_checkpoint(corpus, tmp_path):
    res, logs = _materialize(corpus, tmp_path, ["run.max_steps=2", "run.log_every=1", "run.tensorboard=false"])
    assert res.success
    mats = res.asset_materializations_for_node("roi_sft_checkpoint")
    assert len(mats) == 1  # only rank 0 reports
    meta = mats[0].metadata
    ckpt = meta["checkpoint"].value
    assert ckpt.endswith("step-0000002") and os.path.isfile(os.path.join(ckpt, "model", "model.safetensors"))
    assert meta["loss"].value > 0 and meta["steps"].value == 2 and "grad_norm" in meta
    assert any("step 1:" in m for m in logs)  # trainer log lines reached Dagster


def test_trainer_failure_fails_the_asset_with_its_error(corpus, tmp_path):
    res, logs = _materialize(corpus, tmp_path, ["data.split=no_such_split"])
    assert not res.success
    texts = logs + [
        str(e.event_specific_data.error) for e in res.all_events if e.is_step_failure]
    assert any("no shards for split 'no_such_split'" in t for t in texts), texts[-3:]


def test_config_error_fails_before_launch(corpus, tmp_path):
    res, _ = _materialize(corpus, tmp_path, ["engine.lrr=1"])
    assert not res.success
    errors = [str(e.event_specific_data.error) for e in res.all_events if e.is_step_failure]
    assert any("unknown config key engine.lrr (did you mean engine.lr?)" in t for t in errors), errors
    assert not (tmp_path / "checkpoints").exists()


def test_launchers():
    cfg = RoiSftConfig(launcher="deepspeed", hostfile="/etc/hosts.ds", python="/env/bin/python")
    assert "run.replace=true" in trainer_overrides(cfg, "/c")  # re-materialising retrains in its folder, on purpose
    cmd = trainer_command(cfg, trainer_overrides(cfg, "/c"))
    assert cmd[:5] == ["/env/bin/python", "-m", "deepspeed.launcher.runner", "--hostfile", "/etc/hosts.ds"]
    assert "--module" in cmd and cmd[-1] == "engine.backend=deepspeed"
    tr = trainer_command(RoiSftConfig(launcher="torchrun", nproc_per_node=8), ["data.corpus=/c"])
    assert "--nproc_per_node=8" in tr and "medlvr.training.sft.recipe" in tr
