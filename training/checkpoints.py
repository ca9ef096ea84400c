"""Checkpoint folders of a training run, shared by ROI-SFT and VLPO: naming, listing, pruning, resume, and the
latent settings saved with the weights.

    <run.out_dir>/checkpoints/step-0000010/    one checkpoint (engine layout, `medlvr.training.engine.Engine.save`):
        model/                                 weights, processor, tokenizer, and medlvr_latent.json
        optim/  rng/  trainer_state.json  config.json
        manifest.json                          every other file with its size and sha256, written LAST

`model/medlvr_latent.json` records K (`k_latent`) and whether the latent segment is on, so that evaluation and
VLPO take K from the checkpoint they load instead of retyping it (a config value may still override it).

A folder still being written ends in `.tmp`; a checkpoint is complete only when its `manifest.json` exists and
verifies. `run.resume: auto` walks from the newest checkpoint down, names each damaged one (file and reason) on
one log line and resumes from the newest good one; the resumed checkpoint is hashed in full (docs/training.md
gives the cost), pruning checks the manifest and file sizes only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medlvr.corpus.config import ConfigError
from medlvr.corpus.shards import sha256_file

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
LATENT_INFO = "medlvr_latent.json"
MANIFEST = "manifest.json"  # every file of the checkpoint with size and sha256, written last
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


class CheckpointError(ValueError):
    """An explicitly named checkpoint cannot be resumed; the message names the file and why (one line)."""


def _hash_files(root: Path, rels: list[str]) -> dict[str, str]:
    """sha256 of each file; threads, since hashlib releases the GIL on large buffers and a 7B checkpoint is a few
    multi-GB files (weights shards, optimizer state)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(1, len(rels)))) as pool:
        return dict(zip(rels, pool.map(lambda r: sha256_file(root / r), rels)))


def write_manifest(directory: str | Path) -> Path:
    """Record every file of a finished checkpoint folder (size + sha256) in `manifest.json`, written LAST and
    atomically (temporary file + rename): a folder with a manifest was completely written."""
    directory = Path(directory)
    rels = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}"))
    digests = _hash_files(directory, rels)
    files = {r: {"bytes": (directory / r).stat().st_size, "sha256": digests[r]} for r in rels}
    tmp = directory / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    return directory / MANIFEST


def _read_manifest(directory: Path) -> tuple[dict | None, str | None]:
    path = directory / MANIFEST
    if not path.is_file():
        return None, f"missing {MANIFEST} (the save did not finish)"
    try:
        files = json.loads(path.read_text())["files"]
        sizes = {r: int(f["bytes"]) for r, f in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{MANIFEST} is unreadable ({type(e).__name__})"
    return {r: (sizes[r], files[r]["sha256"]) for r in files}, None


def _size_problem(directory: Path, rel: str, expected: int) -> str | None:
    path = directory / rel
    if not path.is_file():
        return f"{rel} is missing"
    size = path.stat().st_size
    if size < expected:
        return f"{rel} is truncated ({size} of {expected} bytes)"
    if size > expected:
        return f"{rel} has {size} bytes, {expected} were written"
    return None


def checkpoint_problem(directory: str | Path, deep: bool = True) -> str | None:
    """Why the checkpoint folder cannot be resumed (one phrase naming the file), or None when it is good.

    deep=False checks the manifest and the file sizes only (a stat per file: cheap enough for pruning after every
    save); deep=True also recomputes every sha256 (resume: a file of the right size with garbage content)."""
    directory = Path(directory)
    files, why = _read_manifest(directory)
    if why:
        return why
    for rel, (size, _) in sorted(files.items()):
        if problem := _size_problem(directory, rel, size):
            return problem
    if deep:
        digests = _hash_files(directory, sorted(files))
        for rel in sorted(files):
            if digests[rel] != files[rel][1]:
                return f"{rel} does not match its sha256 (content changed after the save)"
    return None


def _step_dirs(out_dir: str | Path) -> list[Path]:
    """Every `step-XXXXXXX` folder (complete or not; not the `.tmp` of a save in progress), oldest first."""
    d = Path(out_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [p for p in d.glob(f"{STEP_PREFIX}*") if p.is_dir() and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=_step)


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run (manifest present, every file at its recorded size), oldest first."""
    return [p for p in _step_dirs(out_dir) if checkpoint_problem(p, deep=False) is None]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _step(path: Path) -> int:
    return int(path.name[len(STEP_PREFIX):])


def prune_checkpoints(out_dir: str | Path, keep_last: int, upto: int | None = None) -> None:
    """After the save of step `upto` (default: the newest complete checkpoint): keep the newest `keep_last`
    complete checkpoints up to that step (`keep_last <= 0`: keep all) and delete the older ones, plus the
    incomplete or damaged folders older than it (nothing would ever resume them). Only complete checkpoints count,
    and folders of later steps (a timeline abandoned by a resume fallback; the run overwrites them when it gets
    there) neither count nor get deleted, so the checkpoint just saved, the newest good one, always stays."""
    if keep_last <= 0:
        return
    complete = list_checkpoints(out_dir)
    if upto is None:
        if not complete:
            return
        upto = _step(complete[-1])
    counted = [p for p in complete if _step(p) <= upto]
    dead = [p for p in _step_dirs(out_dir) if p not in complete and _step(p) < upto]
    for old in counted[:-keep_last] + dead:
        shutil.rmtree(old, ignore_errors=True)


def refuse_silent_overwrite(out_dir: str | Path, resume: str, replace: bool) -> None:
    """A fresh run (`run.resume: ""`) into a run folder that already holds a run (a checkpoint or metrics.jsonl) is
    refused with one line, unless `run.replace: true` says to write over it (the Dagster training assets do:
    re-materialising an asset retrains it from scratch). Nothing is lost silently: the earlier run is continued
    (`run.resume=auto`), kept (a new `run.out_dir`) or replaced on purpose."""
    if resume or replace:
        return
    steps = _step_dirs(out_dir)
    if not steps and not (Path(out_dir) / "metrics.jsonl").is_file():
        return
    held = f"{len(steps)} checkpoint(s), newest {steps[-1].name}" if steps else "metrics.jsonl, no checkpoint"
    raise ConfigError(f"run.out_dir {out_dir} already holds a run ({held}): continue it with --set "
                          "run.resume=auto, keep it with --set run.out_dir=NEW_FOLDER, or write over it with "
                          "--set run.replace=true")


def resolve_resume(out_dir: str | Path, resume: str, log=None) -> Path | None:
    """`run.resume`: "" (start fresh), "auto" or a checkpoint folder; the checkpoint to resume, verified in full.

    "auto" walks from the newest `step-*` folder down, logs one line per damaged one (which file, why) and returns
    the newest good one (None: start fresh). An explicit folder that does not verify is a `CheckpointError`.
    `log(line)`: where the skip lines go (default: stderr)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if not resume:
        return None
    if resume == "auto":
        for ck in reversed(_step_dirs(out_dir)):
            problem = checkpoint_problem(ck)
            if problem is None:
                return ck
            log(f"resume: skipping damaged checkpoint {ck.name}: {problem}")
        return None
    path = Path(resume).expanduser().absolute()
    if not path.is_dir():
        raise CheckpointError(f"run.resume: checkpoint {path} does not exist")
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"run.resume: checkpoint {path} cannot be resumed: {problem}")
    return path


def write_latent_info(model_dir: str | Path, k_latent: int, text_blind: bool = False) -> Path:
    """Record K next to the weights (`k_latent == 0`: a plain model without the latent segment), and whether the
    model was trained with the prompt text after the image blind to it (`text_blind`, training/bottleneck.py)."""
    path = Path(model_dir) / LATENT_INFO
    info = {"k_latent": int(k_latent), "latent": k_latent > 0}
    if text_blind:
        info["text_blind"] = True
    path.write_text(json.dumps(info) + "\n")
    return path


def read_latent_info(model_dir: str | Path) -> dict | None:
    """{"k_latent": K, "latent": bool, "text_blind": bool} saved with a checkpoint's weights; None for a folder without it (a base
    Qwen2.5-VL download, or a checkpoint written before K was recorded)."""
    path = Path(model_dir) / LATENT_INFO
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return {"k_latent": int(info["k_latent"]), "latent": bool(info["latent"]),
            "text_blind": bool(info.get("text_blind", False))}
