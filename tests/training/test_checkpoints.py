"""Checkpoint folders shared by ROI-SFT and VLPO: naming, listing, pruning, resume, and K saved with the weights."""

import json
import shutil
from pathlib import Path

import pytest

from medlvr.training.checkpoints import (MANIFEST, TINY, CheckpointError, checkpoint_dir, checkpoint_problem,
                                         latest_checkpoint, list_checkpoints, prune_checkpoints, read_latent_info,
                                         resolve_model_path, resolve_resume, write_latent_info, write_manifest)
from tests.training.helpers import DAMAGE


def _fake(out: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder with the engine's files (real safetensors / torch.save / JSON); `complete=False`: killed
    before the manifest was written."""
    import torch
    from safetensors.torch import save_file

    d = checkpoint_dir(out, step)
    (d / "model").mkdir(parents=True)
    (d / "optim").mkdir()
    save_file({"w": torch.arange(64, dtype=torch.float32) * step}, str(d / "model" / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(32) * step}}}, d / "optim" / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "extra_state": {"pad": "x" * 64}}))
    if complete:
        write_manifest(d)
    return d


def test_naming_listing_pruning_and_resume(tmp_path):
    assert checkpoint_dir(tmp_path, 10) == tmp_path / "checkpoints" / "step-0000010"
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    for step in (2, 10, 4):
        _fake(tmp_path, step)
    _fake(tmp_path, 12, complete=False)  # an interrupted save
    (tmp_path / "checkpoints" / "step-0000014.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004", "step-0000010"]
    lines = []
    assert resolve_resume(tmp_path, "auto", log=lines.append) == checkpoint_dir(tmp_path, 10)
    assert lines == [f"resume: skipping damaged checkpoint step-0000012: missing {MANIFEST} (the save did not finish)"]
    assert resolve_resume(tmp_path, "") is None
    assert resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, 4))) == checkpoint_dir(tmp_path, 4)
    with pytest.raises(CheckpointError, match=f"cannot be resumed: missing {MANIFEST}"):
        resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, 12)))
    prune_checkpoints(tmp_path, 0)  # keep all
    assert len(list_checkpoints(tmp_path)) == 3
    prune_checkpoints(tmp_path, 2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000010"]
    assert (tmp_path / "checkpoints" / "step-0000012").is_dir()  # newer than every complete one: left alone


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_auto_resume_names_the_damaged_checkpoint_and_falls_back(tmp_path, damage):
    hurt, reason = DAMAGE[damage]
    for step in (2, 4, 6):
        _fake(tmp_path, step)
    hurt(checkpoint_dir(tmp_path, 6))
    hurt(checkpoint_dir(tmp_path, 4))
    lines = []
    assert resolve_resume(tmp_path, "auto", log=lines.append) == checkpoint_dir(tmp_path, 2)
    assert len(lines) == 2 and [line.split(": ")[1] for line in lines] == [
        "skipping damaged checkpoint step-0000006", "skipping damaged checkpoint step-0000004"]
    assert all(reason in line for line in lines), lines
    with pytest.raises(CheckpointError) as e:  # named explicitly: one line, the file and why
        resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, 6)))
    assert reason in str(e.value) and "\n" not in str(e.value)
    # pruning counts complete checkpoints up to the step just saved: the newest good one is never deleted, even
    # when a newer folder passes the cheap size check (garbage of the same size)
    prune_checkpoints(tmp_path, 1, upto=2)
    assert checkpoint_problem(checkpoint_dir(tmp_path, 2)) is None
    shutil.rmtree(checkpoint_dir(tmp_path, 4))  # the resumed run saves step 4 again (Engine.save replaces it)
    _fake(tmp_path, 4)
    prune_checkpoints(tmp_path, 1, upto=4)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    assert checkpoint_problem(checkpoint_dir(tmp_path, 4)) is None  # step 6 waits to be overwritten


def test_no_good_checkpoint_starts_fresh(tmp_path):
    _fake(tmp_path, 2, complete=False)
    lines = []
    assert resolve_resume(tmp_path, "auto", log=lines.append) is None and len(lines) == 1
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume(tmp_path, str(tmp_path / "nowhere"))


def test_latent_info_round_trip_and_model_paths(tmp_path):
    assert read_latent_info(tmp_path) is None
    write_latent_info(tmp_path, 6)
    assert read_latent_info(tmp_path) == {"k_latent": 6, "latent": True, "text_blind": False}
    write_latent_info(tmp_path, 0)
    assert read_latent_info(tmp_path) == {"k_latent": 0, "latent": False, "text_blind": False}
    assert resolve_model_path(TINY) == "tiny"
    assert resolve_model_path("ck/model") == str(Path.cwd() / "ck" / "model")
    with pytest.raises(ValueError, match="empty"):
        resolve_model_path("")


def test_save_checkpoint_records_k(tmp_path):
    from medlvr.training.loading import load_model_or_tiny
    from medlvr.training.model import save_checkpoint

    model, processor, _ = load_model_or_tiny(TINY, tiny_seed=0)
    save_checkpoint(model, processor, tmp_path / "model", k_latent=4)
    assert read_latent_info(tmp_path / "model") == {"k_latent": 4, "latent": True, "text_blind": False}
    again, _, ids = load_model_or_tiny(str(tmp_path / "model"))
    assert ids.latent == processor.tokenizer.convert_tokens_to_ids("<Medlvr_Latent>")
