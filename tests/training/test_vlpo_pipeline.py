"""`vlpo_checkpoint` Dagster asset (Pipes subprocess) and the `medlvr train-vlpo` CLI on the tiny model."""

from pathlib import Path

import dagster as dg
import pytest

from medlvr.pipelines.training.logs import trainer_pipes_client
from medlvr.pipelines.training.vlpo_assets import (ROI_SFT_CHECKPOINT, VlpoConfig, trainer_command,
                                                   trainer_overrides, vlpo_checkpoint)


def test_asset_definition():
    spec = vlpo_checkpoint
    assert spec.key == dg.AssetKey("vlpo_checkpoint")
    assert ROI_SFT_CHECKPOINT in spec.dependency_keys
    assert spec.op.pool == "gpu"
    cfg = VlpoConfig(launcher="torchrun", nproc_per_node=2, overrides=["run.out_dir=/out"])
    assert "run.replace=true" in trainer_overrides(cfg, "/ck/model")  # re-materialising writes over, on purpose
    cmd = trainer_command(cfg, trainer_overrides(cfg, "/ck/model"))
    assert "torch.distributed.run" in cmd and "model.path=/ck/model" in cmd and "engine.backend=deepspeed" in cmd
    assert cmd.index("run.out_dir=/out") > cmd.index("model.path=/ck/model")  # the user's overrides come last


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from medlvr.training.model import save_checkpoint
    from medlvr.training.tiny import build_tiny

    b = build_tiny(seed=0)
    return save_checkpoint(b.model, b.processor, tmp_path_factory.mktemp("sft") / "model", k_latent=2)


@pytest.mark.slow
def test_materialize_through_pipes(tmp_path, tiny_ckpt):
    cfg = VlpoConfig(overrides=[f"model.path={tiny_ckpt}", f"run.out_dir={tmp_path / 'run'}", "run.max_steps=1",
                                "algo.beta=0.0", "rollout.k_latent=null"])  # K from the checkpoint
    res = dg.materialize([vlpo_checkpoint], resources={"pipes_subprocess_client": trainer_pipes_client()},
                         run_config=dg.RunConfig(ops={"vlpo_checkpoint": cfg}),
                         instance=dg.DagsterInstance.ephemeral())
    assert res.success
    mat = res.asset_materializations_for_node("vlpo_checkpoint")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["steps"] == 1 and md["final_dir"].endswith("final/model") and "last_reward_mean" in md
    assert (tmp_path / "run" / "final" / "model" / "model.safetensors").is_file()


def test_asset_fails_without_upstream(tmp_path):
    with pytest.raises(dg.Failure, match="ROI-SFT"):
        dg.materialize([vlpo_checkpoint], resources={"pipes_subprocess_client": trainer_pipes_client()},
                       run_config=dg.RunConfig(ops={"vlpo_checkpoint": VlpoConfig(
                           overrides=[f"run.out_dir={tmp_path}"])}),
                       instance=dg.DagsterInstance.ephemeral())


def test_cli_train_vlpo(tmp_path, tiny_ckpt, capsys):
    import json

    from medlvr.pipelines.cli import main

    rc = main(["train-vlpo", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "vlpo_tiny.yaml"), "--set", f"model.path={tiny_ckpt}",
               "--set", f"run.out_dir={tmp_path}", "--set", "run.max_steps=1", "--set", "run.progress=false"])
    assert rc == 0 and (tmp_path / "final" / "model" / "config.json").is_file()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    reward = json.loads((tmp_path / "metrics.jsonl").read_text())["reward_mean"]  # the run's one step, read apart
    [last] = capsys.readouterr().out.strip().splitlines()  # one readable line, not a JSON dict
    assert last == (f"VLPO: 1 steps: mean reward {reward:.3f} over the run, last step reward {reward:.3f}, accuracy "
                    f"{last.split('accuracy ')[1].split(';')[0]}; final model: {tmp_path / 'final' / 'model'}"), last


def test_console_script_in_a_pipe_has_plain_lines_only(tmp_path, tiny_ckpt):
    """`medlvr train-vlpo` on a checkpoint, stdout and stderr on pipes: plain progress lines, no carriage-return
    animation (the run's bar nor transformers' "Loading weights"), one readable last line."""
    import os
    import subprocess
    import sys

    medlvr = Path(sys.executable).parent / "medlvr"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.run([str(medlvr), "train-vlpo", "--config", str(Path(__file__).resolve().parents[2] / "configs" /
                                                                   "vlpo_tiny.yaml"), "--set", f"model.path={tiny_ckpt}",
                        "--set", f"run.out_dir={tmp_path / 'run'}", "--set", "run.max_steps=2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stdout + p.stderr and "accelerator" not in p.stdout + p.stderr
    assert [line.split()[:3] for line in p.stderr.splitlines()] == [["train:", "step", "1/2"], ["train:", "step", "2/2"]]
    assert p.stdout.startswith("VLPO: 2 steps: mean reward ") and p.stdout.count("\n") == 1
