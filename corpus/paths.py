"""Dataset-root confinement and file discovery shared by all adapters."""

from __future__ import annotations

import functools
import os
from pathlib import Path, PurePosixPath
from typing import Iterator

from medlvr.corpus.records import RecordError


def safe_path(root: Path, rel: str) -> Path:
    """Resolve `rel` inside `root`, refusing anything that escapes it.

    Rejects absolute paths, `..` components, and symlinks (at any level) that resolve outside the root.
    Raises RecordError(stage="discover") with the reason, never returns a path outside the root.
    """
    if rel is None or str(rel).strip() == "":
        raise RecordError("empty file reference", stage="discover")
    rel = str(rel).replace("\\", "/")
    p = PurePosixPath(rel)
    if p.is_absolute() or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise RecordError(f"absolute path not allowed: {rel!r}", stage="discover")
    if ".." in p.parts:
        raise RecordError(f"path escapes the dataset root: {rel!r}", stage="discover")
    full = (root / Path(*p.parts)) if p.parts else root
    root_r = real_dir(os.path.abspath(root))
    if not p.parts:
        return full
    # realpath(dir/name) == realpath(dir)/name unless name is itself a symlink: one lstat per file instead of
    # one per path component (discovery calls this several times per record)
    leaf = os.path.join(real_dir(os.path.abspath(full.parent)), full.name)
    resolved = os.path.realpath(leaf) if os.path.islink(leaf) else leaf
    if resolved != root_r and not resolved.startswith(root_r.rstrip(os.sep) + os.sep):
        raise RecordError(f"path resolves outside the dataset root (symlink?): {rel!r}", stage="discover")
    return full


@functools.lru_cache(maxsize=4096)
def real_dir(path: str) -> str:
    """os.path.realpath of a folder, cached for the length of one discovery (`clear_path_cache` starts a new
    one, so a tree that changes between runs is seen afresh)."""
    return os.path.realpath(path)


def clear_path_cache() -> None:
    real_dir.cache_clear()


def rel_path(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def require_file(root: Path, rel: str) -> Path:
    p = safe_path(root, rel)
    if not p.is_file():
        raise RecordError(f"file referenced but missing: {rel}", stage="discover")
    return p


def walk(root: Path, pattern: str) -> Iterator[Path]:
    """Files under root matching a glob, sorted, skipping hidden and AppleDouble (`._*`) files."""
    for p in sorted(root.glob(pattern)):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.is_file():
            yield p


def is_within(root: Path, path: Path) -> bool:
    try:
        r = os.path.realpath(root)
        return os.path.commonpath([r, os.path.realpath(path)]) == r
    except ValueError:
        return False
