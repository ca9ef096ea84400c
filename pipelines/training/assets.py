"""`roi_sft_checkpoint`: Stage-1 ROI-SFT launched as a subprocess through Dagster Pipes
(pipelines/README.md, "Scale-out": single heavy steps with Pipes).

The asset body only builds a command line and hands it to `PipesSubprocessClient`; the trainer
(`medlvr.training.sft.recipe`) runs in its own process(es): `python -m medlvr.training.sft.recipe` for one process, or
`torchrun` / `deepspeed` for several GPUs and nodes. Every rank inherits the Pipes environment, but only RANK 0
opens the connection: it streams a log line every `run.log_every` steps and reports the final metrics and the
checkpoint path, which become this materialisation's metadata. A non-zero exit of the trainer fails the asset;
the trainer's output (stdout/stderr) is in `<run folder>/logs/` (pipelines/training/logs.py), its traceback's last
line, the log's path and its last lines are in the raised error.

Config (launchpad): the library's own config, i.e. the YAML path plus dotted `key=value` overrides (validated by
the trainer's loader before anything is launched), and the launcher. The asset only wires its upstream: the corpus
is the `corpus_shards` output in `CorpusStorage` (staged locally for remote storage) and the run folder defaults to
`<MedLVR home>/runs/roi_sft`; an override (`data.corpus=...`, `run.out_dir=...`) takes precedence over both.
"""

# no `from __future__ import annotations`: Dagster resolves the Config annotation at decoration time

from pathlib import Path

import dagster as dg
from pydantic import Field

from medlvr.corpus.package_data import shipped_config
from medlvr.pipelines.corpus.resources import CorpusStorage, medlvr_home
from medlvr.pipelines.training.launch import LaunchConfig, launch_command
from medlvr.pipelines.training.logs import reported_materialization, run_trainer, trainer_log_path
from medlvr.training.pipes import ERROR_FILE

TRAINING = "training"


class RoiSftConfig(LaunchConfig):
    config_path: str = Field(default=str(shipped_config("sft_tiny.yaml")),
                             description="trainer YAML (configs/sft_tiny.yaml or configs/sft_qwen25vl_7b.yaml)")
    overrides: list[str] = Field(default_factory=list, description="trainer overrides, e.g. engine.lr=1e-5 or "
                                                                   "run.out_dir=/runs/x (after the asset's defaults)")


def trainer_overrides(cfg: RoiSftConfig, corpus: str) -> list[str]:
    """The asset's defaults (corpus from storage, run folder under the MedLVR home, no progress bar, and
    `run.replace=true`: materialising the asset again retrains it from scratch in the same folder, on purpose),
    then the user's overrides: the later one wins."""
    return [f"data.corpus={corpus}", f"run.out_dir={medlvr_home() / 'runs' / 'roi_sft'}", "run.progress=false",
            "run.replace=true", *cfg.overrides]


def trainer_command(cfg: RoiSftConfig, overrides: list[str]) -> list[str]:
    args = ["--config", cfg.config_path]
    for o in overrides:
        args += ["--set", o]
    return launch_command(cfg, "medlvr.training.sft.recipe", args)


@dg.asset(group_name=TRAINING, pool="gpu", kinds={"pytorch"}, deps=[dg.AssetKey("corpus_shards")],
          description="Stage-1 ROI-SFT checkpoint (safetensors + processor) trained on the corpus shards; "
                      "metadata: final metrics and the checkpoint path.")
def roi_sft_checkpoint(context: dg.AssetExecutionContext, config: RoiSftConfig, storage: CorpusStorage,
                       pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    from medlvr.training.sft.config import load_sft_config  # torch: only when the asset runs

    own_corpus = any(o.startswith("data.corpus=") for o in config.overrides)
    with storage.workdir(pull_paths=[] if own_corpus else ["shards"]) as corpus_dir:
        overrides = trainer_overrides(config, str(corpus_dir))
        try:  # a config error fails here, in one line, before a process is launched
            trainer_cfg = load_sft_config(config.config_path, overrides)
        except ValueError as e:
            raise dg.Failure(description=f"ROI-SFT config: {e}") from None
        cmd = trainer_command(config, overrides)
        err_file = Path(trainer_cfg.run.out_dir) / ERROR_FILE
        err_file.unlink(missing_ok=True)
        log_path = trainer_log_path(trainer_cfg.run.out_dir, context)
        invocation = run_trainer(pipes_subprocess_client, context, cmd, Path.cwd(), {"TOKENIZERS_PARALLELISM": "false"},
                                 log_path, "ROI-SFT", err_file)
        return reported_materialization(invocation, "ROI-SFT", log_path)


TRAINING_ASSETS = [roi_sft_checkpoint]
