"""Test helpers: the tiny SFT config (configs/sft_tiny.yaml) pointed at a corpus and an output folder."""

from __future__ import annotations

from pathlib import Path

from medlvr.training.checkpoints import MANIFEST
from medlvr.training.sft.config import SFTConfig, load_sft_config

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "sft_tiny.yaml"


def tiny_config(corpus: str | Path, out_dir: str | Path, *overrides: str) -> SFTConfig:
    """configs/sft_tiny.yaml with the corpus, output folder and overrides; no progress bar / TensorBoard."""
    return load_sft_config(TINY_CONFIG, [f"data.corpus={corpus}", f"run.out_dir={out_dir}", "run.progress=false",
                                     "run.tensorboard=false", *overrides])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * (path.stat().st_size // 256) + b"x" * (path.stat().st_size % 256))


DAMAGE = {  # how a checkpoint folder gets damaged (issue 15 point 5) -> what the resume log line must say
    "truncated safetensors": (lambda d: _truncate(d / "model" / "model.safetensors"),
                              "model/model.safetensors is truncated"),
    "garbage optimizer.pt": (lambda d: _garbage(d / "optim" / "optimizer.pt"),
                             "optim/optimizer.pt does not match its sha256"),
    "truncated trainer_state.json": (lambda d: _truncate(d / "trainer_state.json"), "trainer_state.json is truncated"),
    "killed before the manifest": (lambda d: (d / MANIFEST).unlink(), f"missing {MANIFEST}"),
    "garbage manifest": (lambda d: (d / MANIFEST).write_text("{\"files\": [1"), f"{MANIFEST} is unreadable"),
    "file deleted": (lambda d: (d / "optim" / "optimizer.pt").unlink(), "optim/optimizer.pt is missing"),
}


class Killed(Exception):
    """Raised by `kill_at`: a run killed right after a step (and its checkpoint)."""


def kill_at(step: int):
    """An `on_step` callback of the SFT recipe that kills the run after optimizer step `step`."""

    def on_step(s, metrics):
        if s == step:
            raise Killed

    return on_step
