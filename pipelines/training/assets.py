"""`roi_sft_checkpoint`: Stage-1 ROI-SFT launched as a subprocess through Dagster Pipes (dagster.md §3.7, §6.4).

The asset body only builds a command line and hands it to `PipesSubprocessClient`; the trainer
(`medlvr.training.sft.recipe`) runs in its own process(es): `python -m medlvr.training.sft.recipe` for one process, or
`torchrun` / `deepspeed` for several GPUs and nodes. Every rank inherits the Pipes environment, but only RANK 0
opens the connection: it streams a log line every `run.log_every` steps and reports the final metrics and the
checkpoint path, which become this materialisation's metadata. A non-zero exit of the trainer fails the asset;
the trainer's traceback is in the step's stderr (captured) and in the raised error.

Config (launchpad): the YAML config path, `key=value` overrides, launcher and process counts. The corpus is the
`corpus_shards` output in `CorpusStorage` (staged locally for remote storage) unless `corpus` is given.
"""

# no `from __future__ import annotations`: Dagster resolves the Config annotation at decoration time

from pathlib import Path

import dagster as dg
from pydantic import Field

from medlvr.pipelines.corpus.resources import CorpusStorage, medlvr_home
from medlvr.pipelines.training.launch import LaunchConfig, launch_command

REPO = Path(__file__).resolve().parents[2]
TRAINING = "training"


class RoiSftConfig(LaunchConfig):
    config_path: str = Field(default=str(REPO / "configs" / "sft_tiny.yaml"),
                             description="trainer YAML (configs/sft_tiny.yaml or configs/sft_qwen25vl_7b.yaml)")
    overrides: list[str] = Field(default_factory=list, description="trainer overrides, e.g. engine.lr=1e-5")
    corpus: str = Field(default="", description="corpus folder with shards/; empty: the CorpusStorage location")
    out_dir: str = Field(default="", description="run folder; empty: <MedLVR home>/runs/roi_sft")


def trainer_command(cfg: RoiSftConfig, corpus: str, out_dir: str) -> list[str]:
    args = ["--config", cfg.config_path, "--set", f"data.corpus={corpus}", "--set", f"run.out_dir={out_dir}",
            "--set", "run.progress=false"]
    for o in cfg.overrides:
        args += ["--set", o]
    return launch_command(cfg, "medlvr.training.sft.recipe", args)


@dg.asset(group_name=TRAINING, pool="gpu", kinds={"pytorch"}, deps=[dg.AssetKey("corpus_shards")],
          description="Stage-1 ROI-SFT checkpoint (safetensors + processor) trained on the corpus shards; "
                      "metadata: final metrics and the checkpoint path.")
def roi_sft_checkpoint(context: dg.AssetExecutionContext, config: RoiSftConfig, storage: CorpusStorage,
                       pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    out_dir = config.out_dir or str(medlvr_home() / "runs" / "roi_sft")
    with storage.workdir(pull_paths=[] if config.corpus else ["shards"]) as corpus_dir:
        corpus = config.corpus or str(corpus_dir)
        cmd = trainer_command(config, corpus, out_dir)
        context.log.info("launching: " + " ".join(cmd))
        err_file = Path(out_dir) / "trainer_error.txt"
        err_file.unlink(missing_ok=True)
        try:
            invocation = pipes_subprocess_client.run(command=cmd, context=context, cwd=str(REPO),
                                                     env={"TOKENIZERS_PARALLELISM": "false"})
        except dg.DagsterPipesExecutionError as e:
            tb = err_file.read_text() if err_file.is_file() else ""
            last = tb.strip().splitlines()[-1] if tb.strip() else str(e)
            raise dg.Failure(description=f"ROI-SFT trainer failed: {last}",
                             metadata={"traceback": dg.MetadataValue.md(f"```\n{tb[-8000:]}\n```"),
                                       "command": " ".join(cmd)}) from e
        results = invocation.get_results()
    if not results:
        raise dg.Failure("the trainer exited without reporting a materialisation (was RANK 0 launched?)")
    return results[0]


TRAINING_ASSETS = [roi_sft_checkpoint]
