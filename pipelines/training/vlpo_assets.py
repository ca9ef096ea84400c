"""`vlpo_checkpoint`: Stage-2 VLPO / GRPO launched as a subprocess through Dagster Pipes (dagster.md §3.7, §6.4).

Downstream of `roi_sft_checkpoint` (referenced by its AssetKey only): the starting policy AND the frozen KL
reference are the ROI-SFT checkpoint's `model/` folder, read from the latest `roi_sft_checkpoint`
materialisation's `checkpoint` metadata (or `model_path` in the run config). The trainer
(`medlvr.training.vlpo.trainer`) runs in its own process(es); only RANK 0 opens the Pipes connection and reports the
final metrics and checkpoint paths, which become this materialisation's metadata. Pool `gpu` (limit 1 per host).
Wire with `dg.Definitions(assets=VLPO_ASSETS)` next to the training assets.
"""

# no `from __future__ import annotations`: Dagster resolves the Config annotation at decoration time

from pathlib import Path

import dagster as dg
from pydantic import Field

from medlvr.pipelines.corpus.resources import medlvr_home
from medlvr.pipelines.training.launch import LaunchConfig, launch_command

REPO = Path(__file__).resolve().parents[2]
ROI_SFT_CHECKPOINT = dg.AssetKey("roi_sft_checkpoint")
TRAINER_MODULE = "medlvr.training.vlpo.trainer"


class VlpoConfig(LaunchConfig):
    config_path: str = Field(default=str(REPO / "configs" / "vlpo_tiny.yaml"),
                             description="trainer YAML (configs/vlpo_tiny.yaml or configs/vlpo_qwen25vl_7b.yaml)")
    overrides: list[str] = Field(default_factory=list, description="trainer overrides, e.g. algo.variant=grpo")
    model_path: str = Field(default="", description="starting policy / reference; empty: the ROI-SFT asset's model")
    data_root: str = Field(default="", description="OmniMedVQA root; empty: the YAML's data section")
    out_dir: str = Field(default="", description="run folder; empty: <MedLVR home>/runs/vlpo")


def upstream_model_path(instance) -> str | None:
    """`<checkpoint>/model` of the latest roi_sft_checkpoint materialisation, or None."""
    event = instance.get_latest_materialization_event(ROI_SFT_CHECKPOINT)
    if event is None or event.asset_materialization is None:
        return None
    ck = event.asset_materialization.metadata.get("checkpoint")
    if ck is None or not getattr(ck, "value", None):
        return None
    return str(Path(ck.value) / "model")


def trainer_command(cfg: VlpoConfig, model_path: str, out_dir: str) -> list[str]:
    args = ["--config", cfg.config_path, "--set", f"model.path={model_path}", "--set", f"train.output_dir={out_dir}",
            "--set", "train.progress=false"]
    if cfg.data_root:
        args += ["--set", "data.source=omnimedvqa", "--set", f"data.root={cfg.data_root}"]
    for o in cfg.overrides:
        args += ["--set", o]
    return launch_command(cfg, TRAINER_MODULE, args)


@dg.asset(group_name="training", pool="gpu", kinds={"pytorch"}, deps=[ROI_SFT_CHECKPOINT],
          description="Stage-2 VLPO checkpoint (policy after RL on OmniMedVQA, starting from and regularised "
                      "towards the ROI-SFT checkpoint); metadata: last-step metrics and the checkpoint paths.")
def vlpo_checkpoint(context: dg.AssetExecutionContext, config: VlpoConfig,
                    pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    model_path = config.model_path or upstream_model_path(context.instance)
    if not model_path:
        raise dg.Failure("no ROI-SFT checkpoint: materialise roi_sft_checkpoint first or set model_path")
    out_dir = config.out_dir or str(medlvr_home() / "runs" / "vlpo")
    cmd = trainer_command(config, model_path, out_dir)
    context.log.info("launching: " + " ".join(cmd))
    invocation = pipes_subprocess_client.run(command=cmd, context=context, cwd=str(REPO),
                                             env={"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    results = invocation.get_results()
    if not results:
        raise dg.Failure("the trainer exited without reporting a materialisation (was RANK 0 launched?)")
    return results[0]


VLPO_ASSETS = [vlpo_checkpoint]
