"""`vlpo_checkpoint`: Stage-2 VLPO / GRPO launched as a subprocess through Dagster Pipes
(pipelines/README.md, "Scale-out": single heavy steps with Pipes).

Downstream of `roi_sft_checkpoint` (referenced by its AssetKey only): the starting policy AND the frozen KL
reference are the ROI-SFT checkpoint's `model/` folder, read from the latest `roi_sft_checkpoint`
materialisation's `checkpoint` metadata (or a `model.path=...` override). K is the checkpoint's own (saved with
it), unless an override sets `rollout.k_latent`. The run config is the library's own config: the YAML path plus
dotted overrides (validated by the trainer's loader before anything is launched). The trainer
(`medlvr.training.vlpo.trainer`) runs in its own process(es); only RANK 0 opens the Pipes connection and reports the
final metrics and checkpoint paths, which become this materialisation's metadata. Pool `gpu` (limit 1 per host).
Wire with `dg.Definitions(assets=VLPO_ASSETS)` next to the training assets.
"""

# no `from __future__ import annotations`: Dagster resolves the Config annotation at decoration time

from pathlib import Path

import dagster as dg
from pydantic import Field

from medlvr.corpus.config import load_config
from medlvr.corpus.package_data import shipped_config
from medlvr.pipelines.corpus.resources import medlvr_home
from medlvr.pipelines.training.launch import LaunchConfig, launch_command
from medlvr.pipelines.training.logs import reported_materialization, run_trainer, trainer_log_path
from medlvr.training.pipes import ERROR_FILE

ROI_SFT_CHECKPOINT = dg.AssetKey("roi_sft_checkpoint")
TRAINER_MODULE = "medlvr.training.vlpo.trainer"


class VlpoConfig(LaunchConfig):
    config_path: str = Field(default=str(shipped_config("vlpo_tiny.yaml")),
                             description="trainer YAML (configs/vlpo_tiny.yaml or configs/vlpo_qwen25vl_7b.yaml)")
    overrides: list[str] = Field(default_factory=list, description="trainer overrides, e.g. algo.variant=grpo, "
                                 "model.path=DIR (default: the ROI-SFT asset's model), run.out_dir=DIR")


def upstream_model_path(instance) -> str | None:
    """`<checkpoint>/model` of the latest roi_sft_checkpoint materialisation, or None."""
    event = instance.get_latest_materialization_event(ROI_SFT_CHECKPOINT)
    if event is None or event.asset_materialization is None:
        return None
    ck = event.asset_materialization.metadata.get("checkpoint")
    if ck is None or not getattr(ck, "value", None):
        return None
    return str(Path(ck.value) / "model")


def trainer_overrides(cfg: VlpoConfig, model_path: str | None) -> list[str]:
    """The asset's defaults (the upstream model, run folder under the MedLVR home, no progress bar, and
    `run.replace=true`: a fresh run may write over the asset's earlier one, on purpose), then the user's
    overrides: the later one wins."""
    upstream = [f"model.path={model_path}"] if model_path else []
    return [*upstream, f"run.out_dir={medlvr_home() / 'runs' / 'vlpo'}", "run.progress=false", "run.replace=true",
            *cfg.overrides]


def trainer_command(cfg: VlpoConfig, overrides: list[str]) -> list[str]:
    args = ["--config", cfg.config_path]
    for o in overrides:
        args += ["--set", o]
    return launch_command(cfg, TRAINER_MODULE, args)


@dg.asset(group_name="training", pool="gpu", kinds={"pytorch"}, deps=[ROI_SFT_CHECKPOINT],
          description="Stage-2 VLPO checkpoint (policy after RL on the configured prompts, starting from and "
                      "regularised towards the ROI-SFT checkpoint); metadata: last-step metrics and the checkpoint "
                      "paths.")
def vlpo_checkpoint(context: dg.AssetExecutionContext, config: VlpoConfig,
                    pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    from medlvr.training.vlpo.config import VLPORunConfig, resolve_k_latent  # torch: only when the asset runs

    own_model = any(o.startswith("model.path=") for o in config.overrides)
    model_path = None if own_model else upstream_model_path(context.instance)
    if not own_model and not model_path:
        raise dg.Failure("no ROI-SFT checkpoint: materialise roi_sft_checkpoint first or set model.path=...")
    overrides = trainer_overrides(config, model_path)
    try:  # a config error (or a checkpoint without K) fails here, in one line, before a process is launched
        trainer_cfg = load_config(VLPORunConfig, config.config_path, overrides)
        resolve_k_latent(trainer_cfg)
    except ValueError as e:
        raise dg.Failure(description=f"VLPO config: {e}") from None
    cmd = trainer_command(config, overrides)
    err_file = Path(trainer_cfg.run.out_dir) / ERROR_FILE
    err_file.unlink(missing_ok=True)
    log_path = trainer_log_path(trainer_cfg.run.out_dir, context)
    invocation = run_trainer(pipes_subprocess_client, context, cmd, Path.cwd(),
                             {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}, log_path, "VLPO", err_file)
    return reported_materialization(invocation, "VLPO", log_path)


VLPO_ASSETS = [vlpo_checkpoint]
