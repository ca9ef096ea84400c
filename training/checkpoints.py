"""Checkpoint folders of a training run, shared by ROI-SFT and VLPO: naming, listing, pruning, resume, and the
latent settings saved with the weights.

    <run.out_dir>/checkpoints/step-0000010/    one checkpoint (engine layout, `medlvr.training.engine.Engine.save`):
        model/                                 weights, processor, tokenizer, and medlvr_latent.json
        optim/  rng/  trainer_state.json  config.json

`model/medlvr_latent.json` records K (`k_latent`) and whether the latent segment is on, so that evaluation and
VLPO take K from the checkpoint they load instead of retyping it (a config value may still override it).
A folder still being written ends in `.tmp` and has no `trainer_state.json` until it is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
LATENT_INFO = "medlvr_latent.json"
TINY = "tiny"  # `model.path: tiny`: the offline random tiny model (medlvr.training.tiny), not a checkpoint


def resolve_model_path(path: str) -> str:
    """A config's model path: `tiny` as is, a checkpoint directory made absolute against the working directory
    (the config rule for relative paths; the field is a string because `tiny` is not a path)."""
    if not path:
        raise ValueError("model path is empty: give `tiny` or a checkpoint directory")
    return path if path == TINY else str(Path(path).expanduser().absolute())


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    """`<out_dir>/checkpoints/step-0000010` for step 10."""
    return Path(out_dir) / CHECKPOINTS / f"{STEP_PREFIX}{step:07d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (an interrupted save has no trainer_state.json), oldest first."""
    d = Path(out_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [p for p in d.glob(f"{STEP_PREFIX}*") if p.is_dir() and p.name[len(STEP_PREFIX):].isdigit()
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints (`keep_last <= 0`: keep all)."""
    if keep_last <= 0:
        return
    for old in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(out_dir: str | Path, resume: str) -> Path | None:
    """`run.resume`: "" (start fresh), "auto" (the newest checkpoint in out_dir, if any) or a checkpoint folder."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    path = Path(resume).expanduser().absolute()
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"run.resume: {path} is not a complete checkpoint (no trainer_state.json)")
    return path


def write_latent_info(model_dir: str | Path, k_latent: int) -> Path:
    """Record K next to the weights (`k_latent == 0`: a plain model without the latent segment)."""
    path = Path(model_dir) / LATENT_INFO
    path.write_text(json.dumps({"k_latent": int(k_latent), "latent": k_latent > 0}) + "\n")
    return path


def read_latent_info(model_dir: str | Path) -> dict | None:
    """{"k_latent": K, "latent": bool} saved with a checkpoint's weights; None for a folder without it (a base
    Qwen2.5-VL download, or a checkpoint written before K was recorded)."""
    path = Path(model_dir) / LATENT_INFO
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return {"k_latent": int(info["k_latent"]), "latent": bool(info["latent"])}
