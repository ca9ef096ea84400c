"""Code versions of assets: a hash of the source of the packages an asset's step calls, so that Dagster's own
staleness (`code_version` on the asset, data versions on its materialisations) marks an asset stale when that
code changes. Read through importlib (the installed package's files), so it works in a wheel install as well as
in a source checkout."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
from functools import lru_cache
from pathlib import Path

SOURCE_SUFFIXES = (".py", ".yaml", ".csv", ".json", ".tsv")


@lru_cache(maxsize=None)
def package_code_version(*packages: str) -> str:
    """sha256 (20 hex) of every source/data file of `packages` (dotted names), in path order. A package that is
    not a folder on disk (a zip import) contributes the distribution's version instead."""
    h = hashlib.sha256()
    for pkg in packages:
        root = importlib.resources.files(pkg)
        if not isinstance(root, Path) or not root.is_dir():
            h.update(f"{pkg}=={importlib.metadata.version('medlvr')}".encode())
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts:
                h.update(f"{pkg}/{p.relative_to(root).as_posix()}\0".encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:20]


def folder_fingerprint(root: Path) -> str:
    """Paths, sizes and modification times of the files under `root` (cheap: no file is read). The raw_dataset
    asset's data version and the raw-dataset sensor's cursor: a raw file touched or replaced gives a new value."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


SAMPLED_FILES = 256  # files whose size and mtime the quick fingerprint reads, spread evenly over the listing


def quick_folder_fingerprint(root: Path, sampled_files: int = SAMPLED_FILES) -> str:
    """A cheap change detector for a raw folder (the raw-dataset sensor's cursor): the modification time of every
    directory plus size and mtime of `sampled_files` files spread evenly over the sorted listing. Adding, removing
    or renaming a file changes its directory's mtime, so those are always seen; an in-place rewrite is seen when
    the file is in the sample (all files of a folder with at most `sampled_files` of them). Costs one stat per
    directory and per sampled file; directories are told apart from files by the listing's entry type, without a
    stat. `folder_fingerprint` (every file) stays the raw_dataset asset's data version."""
    h = hashlib.sha1()
    files: list[str] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        path = os.path.join(root, rel)
        try:
            h.update(f"D{rel}\0{os.stat(path).st_mtime_ns}\n".encode())
            with os.scandir(path) as it:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            h.update(f"D{rel}\0gone\n".encode())
            continue
        pending.extend(os.path.join(rel, name) for name, is_dir in reversed(entries) if is_dir)
        files.extend(os.path.join(rel, name) for name, is_dir in entries if not is_dir)
    n = len(files)
    h.update(f"N{n}\n".encode())
    picks = range(n) if n <= sampled_files else sorted({i * n // sampled_files for i in range(sampled_files)})
    for rel in (files[i] for i in picks):
        try:
            st = os.stat(os.path.join(root, rel))
            h.update(f"F{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"F{rel}\0gone\n".encode())
    return h.hexdigest()


@lru_cache(maxsize=None)
def files_version(*paths: str | Path) -> str:
    """sha256 (20 hex) of the contents of `paths` (a missing file counts as missing). The asset groups whose
    steps read a shipped default config (configs/sft_tiny.yaml, ...) add it to their code version: editing that
    config changes what the step does, so it marks the step stale like a code change does."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        h.update(f"{p.name}\0".encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()[:20]
