"""Dataset-root confinement and file discovery shared by all adapters.

Every file a reader opens goes through `open_confined` (or, for a library that must be given a file name,
`confined`): the one place that resolves symlinks, refuses anything outside the dataset root and checks the file's
size against the record limit (corpus.limits). Each approved path is announced with the audit event
`medlvr.confined` (its resolved path), so a `sys.addaudithook` can check that every Python-level "open" of a data
file was approved first (tests/corpus/test_confinement.py). `walk` yields no file that resolves outside the root;
those it saw are kept for `take_escapes` (the runner turns them into rejects).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from medlvr.corpus.limits import check_file_size
from medlvr.corpus.records import RecordError

AUDIT_EVENT = "medlvr.confined"


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
    if not p.parts:
        return full
    if not _inside(_resolved(full), root):
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


def _resolved(path: Path) -> str:
    """realpath(path) with one lstat for the leaf: realpath(dir/name) == realpath(dir)/name unless name is itself
    a symlink, and folders' realpaths are cached (`real_dir`; discovery calls this several times per record)."""
    leaf = os.path.join(real_dir(os.path.abspath(path.parent)), path.name)
    return os.path.realpath(leaf) if os.path.islink(leaf) else leaf


def _inside(resolved: str, root: Path) -> bool:
    root_r = real_dir(os.path.abspath(root))
    return resolved == root_r or resolved.startswith(root_r.rstrip(os.sep) + os.sep)


def _relative(root: Path, path: str | Path) -> str:
    """A str is already relative to the root; a Path is the root joined with a relative path (as `safe_path`
    returns it), or anything else, which is then named relative to the root or refused."""
    if isinstance(path, str):
        return path
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == ".." or rel.startswith(".." + os.sep):
        raise RecordError(f"path lies outside the dataset root: {Path(path).name!r}")
    return Path(rel).as_posix()


def confined(root: Path, path: str | Path, stage: str = "load") -> Path:
    """The resolved path of a file inside `root` that a reader may open: `path` relative to the root (str) or
    joined to it (Path). Refuses, as a RecordError naming the relative path, a path that escapes the root by `..`,
    an absolute path, a symlink at any level that resolves outside, a missing file and a file larger than the
    record limit. Announces the approved path with the audit event `medlvr.confined`."""
    rel = _relative(root, path)
    try:
        full = safe_path(root, rel)
    except RecordError as e:
        raise RecordError(e.reason, stage=stage) from None
    real = os.path.realpath(full)  # every level: a folder swapped for a symlink since discovery is caught here
    if not _inside(real, root):
        raise RecordError(f"path resolves outside the dataset root (symlink?): {rel!r}", stage=stage)
    try:
        st = os.stat(real)
    except OSError:
        raise RecordError(f"file referenced but missing: {rel}", stage=stage) from None
    if not os.path.isfile(real):
        raise RecordError(f"not a regular file: {rel}", stage=stage)
    check_file_size(st.st_size, rel, stage)
    sys.audit(AUDIT_EVENT, real)
    return Path(real)


def open_confined(root: Path, path: str | Path, mode: str = "rb", stage: str = "load", **kwargs) -> IO:
    """`open` of a file checked by `confined` (the resolved path is opened: no symlink is followed twice)."""
    real = confined(root, path, stage)
    try:
        return open(real, mode, **kwargs)
    except OSError as e:
        raise RecordError(f"cannot open {_relative(root, path)}: {e.strerror or type(e).__name__}", stage=stage)


def read_confined(root: Path, path: str | Path, stage: str = "load") -> bytes:
    """The bytes of a confined file (its size already checked against the record limit)."""
    with open_confined(root, path, "rb", stage) as f:
        return f.read()


_escapes: list[str] = []  # files `walk` refused since the last `take_escapes` (relative paths)


def take_escapes() -> list[str]:
    """The relative paths of the files `walk` skipped because they resolve outside their root, once each."""
    out = sorted(set(_escapes))
    _escapes.clear()
    return out


def walk(root: Path, pattern: str) -> Iterator[Path]:
    """Files under root matching a glob, sorted, skipping hidden and AppleDouble (`._*`) files. A file (or a
    file under a symlinked folder) that resolves outside the root is not yielded; it is kept for `take_escapes`."""
    for p in sorted(root.glob(pattern)):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if not _inside(_resolved(p), root):
            _escapes.append(rel.as_posix())
            continue
        if p.is_file():
            yield p


def is_within(root: Path, path: Path) -> bool:
    try:
        r = os.path.realpath(root)
        return os.path.commonpath([r, os.path.realpath(path)]) == r
    except ValueError:
        return False
