"""Checkpoint folders shared by ROI-SFT and VLPO: naming, listing, pruning, resume, and K saved with the weights."""

import json
from pathlib import Path

import pytest

from medlvr.training.checkpoints import (TINY, checkpoint_dir, latest_checkpoint, list_checkpoints,
                                         prune_checkpoints, read_latent_info, resolve_model_path, resolve_resume,
                                         write_latent_info)


def _fake(out: Path, step: int, complete: bool = True) -> Path:
    d = checkpoint_dir(out, step)
    d.mkdir(parents=True)
    if complete:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return d


def test_naming_listing_pruning_and_resume(tmp_path):
    assert checkpoint_dir(tmp_path, 10) == tmp_path / "checkpoints" / "step-0000010"
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        _fake(tmp_path, step)
    _fake(tmp_path, 12, complete=False)  # an interrupted save
    (tmp_path / "checkpoints" / "step-0000014.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004", "step-0000010"]
    assert resolve_resume(tmp_path, "auto") == checkpoint_dir(tmp_path, 10)
    assert resolve_resume(tmp_path, "") is None
    assert resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, 4))) == checkpoint_dir(tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, 12)))
    prune_checkpoints(tmp_path, 0)  # keep all
    assert len(list_checkpoints(tmp_path)) == 3
    prune_checkpoints(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000010"]


def test_latent_info_round_trip_and_model_paths(tmp_path):
    assert read_latent_info(tmp_path) is None
    write_latent_info(tmp_path, 6)
    assert read_latent_info(tmp_path) == {"k_latent": 6, "latent": True}
    write_latent_info(tmp_path, 0)
    assert read_latent_info(tmp_path) == {"k_latent": 0, "latent": False}
    assert resolve_model_path(TINY) == "tiny"
    assert resolve_model_path("ck/model") == str(Path.cwd() / "ck" / "model")
    with pytest.raises(ValueError, match="empty"):
        resolve_model_path("")


def test_save_checkpoint_records_k(tmp_path):
    from medlvr.training.loading import load_model_or_tiny
    from medlvr.training.model import save_checkpoint

    model, processor, _ = load_model_or_tiny(TINY, tiny_seed=0)
    save_checkpoint(model, processor, tmp_path / "model", k_latent=4)
    assert read_latent_info(tmp_path / "model") == {"k_latent": 4, "latent": True}
    again, _, ids = load_model_or_tiny(str(tmp_path / "model"))
    assert ids.latent == processor.tokenizer.convert_tokens_to_ids("<Medlvr_Latent>")
