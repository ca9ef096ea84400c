"""`vlpo_checkpoint` Dagster asset (Pipes subprocess) and the `medlvr train-vlpo` CLI on the tiny model."""

from pathlib import Path

import dagster as dg
import pytest

from medlvr.pipelines.training.vlpo_assets import ROI_SFT_CHECKPOINT, VlpoConfig, trainer_command, vlpo_checkpoint


def test_asset_definition():
    spec = vlpo_checkpoint
    assert spec.key == dg.AssetKey("vlpo_checkpoint")
    assert ROI_SFT_CHECKPOINT in spec.dependency_keys
    assert spec.op.pool == "gpu"
    cmd = trainer_command(VlpoConfig(launcher="torchrun", nproc_per_node=2), "/ck/model", "/out")
    assert "torch.distributed.run" in cmd and "model.path=/ck/model" in cmd and "engine.backend=deepspeed" in cmd


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    b = build_tiny(seed=0)
    return save_checkpoint(b.model, b.processor, tmp_path_factory.mktemp("sft") / "model")


@pytest.mark.slow
def test_materialize_through_pipes(tmp_path, tiny_ckpt):
    cfg = VlpoConfig(model_path=str(tiny_ckpt), out_dir=str(tmp_path / "run"),
                     overrides=["train.steps=1", "algo.beta=0.0"])
    res = dg.materialize([vlpo_checkpoint], resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
                         run_config=dg.RunConfig(ops={"vlpo_checkpoint": cfg}),
                         instance=dg.DagsterInstance.ephemeral())
    assert res.success
    mat = res.asset_materializations_for_node("vlpo_checkpoint")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["steps"] == 1 and md["final_dir"].endswith("final/model") and "last_reward_mean" in md
    assert (tmp_path / "run" / "final" / "model" / "model.safetensors").is_file()


def test_asset_fails_without_upstream(tmp_path):
    with pytest.raises(dg.Failure, match="ROI-SFT"):
        dg.materialize([vlpo_checkpoint], resources={"pipes_subprocess_client": dg.PipesSubprocessClient()},
                       run_config=dg.RunConfig(ops={"vlpo_checkpoint": VlpoConfig(out_dir=str(tmp_path))}),
                       instance=dg.DagsterInstance.ephemeral())


def test_cli_train_vlpo(tmp_path, tiny_ckpt):
    from medlvr.pipelines.cli import main

    rc = main(["train-vlpo", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "vlpo_tiny.yaml"), "--set", f"model.path={tiny_ckpt}",
               "--set", f"train.output_dir={tmp_path}", "--set", "train.steps=1", "--set", "train.progress=false"])
    assert rc == 0 and (tmp_path / "final" / "model" / "config.json").is_file()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
