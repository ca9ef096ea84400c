"""How training assets start a trainer: one process, `torchrun`, or the `deepspeed` launcher (with a hostfile for
several nodes). Shared by the ROI-SFT and VLPO assets; every rank runs the module, only rank 0 reports to Pipes."""

# no `from __future__ import annotations`: Dagster resolves Config annotations at decoration time

import sys

import dagster as dg
from pydantic import Field


class LaunchConfig(dg.Config):
    launcher: str = Field(default="python", description="python | torchrun | deepspeed")
    nproc_per_node: int = Field(default=1, description="processes (GPUs) per node for torchrun / deepspeed")
    hostfile: str = Field(default="", description="deepspeed hostfile for several nodes (rank-0 node reports)")
    python: str = Field(default="", description="interpreter of the training environment; empty: this one")


def launch_command(cfg: LaunchConfig, module: str, args: list[str]) -> list[str]:
    """The command line that runs `python -m module *args` under the configured launcher."""
    py = cfg.python or sys.executable
    if cfg.launcher == "python":
        return [py, "-m", module, *args]
    distributed = [*args, "--set", "engine.backend=deepspeed"]
    if cfg.launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.nproc_per_node}", "-m", module,
                *distributed]
    if cfg.launcher == "deepspeed":
        launch = [py, "-m", "deepspeed.launcher.runner"]
        launch += ["--hostfile", cfg.hostfile] if cfg.hostfile else [f"--num_gpus={cfg.nproc_per_node}"]
        return [*launch, "--module", module, *distributed]
    raise dg.Failure(f"launcher must be python, torchrun or deepspeed, got {cfg.launcher!r}")
