"""Test helpers: the tiny SFT config (configs/sft_tiny.yaml) pointed at a corpus and an output folder."""

from __future__ import annotations

from pathlib import Path

from medlvr.training.sft.config import SFTConfig, load_sft_config

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "sft_tiny.yaml"


def tiny_config(corpus: str | Path, out_dir: str | Path, *overrides: str) -> SFTConfig:
    """configs/sft_tiny.yaml with the corpus, output folder and overrides; no progress bar / TensorBoard."""
    return load_sft_config(TINY_CONFIG, [f"data.corpus={corpus}", f"run.out_dir={out_dir}", "run.progress=false",
                                     "run.tensorboard=false", *overrides])


class Killed(Exception):
    """Raised by `kill_at`: a run killed right after a step (and its checkpoint)."""


def kill_at(step: int):
    """An `on_step` callback of the SFT recipe that kills the run after optimizer step `step`."""

    def on_step(s, metrics):
        if s == step:
            raise Killed

    return on_step
