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
    """Paths, sizes and modification times of every file under `root` (no file is read, but every file is statted).
    The raw_dataset asset's data version: a raw file touched or replaced gives a new value. The raw-dataset
    sensor ticks on the cheaper `quick_folder_fingerprint`."""
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
    listing: list[tuple[str, list[str]]] = []  # (directory relative to root, its file names sorted), walk order
    pending = [""]
    while pending:
        rel = pending.pop()
        path = os.path.join(root, rel)
        names: list[str] = []
        subdirs: list[str] = []
        try:
            h.update(f"D{rel}\0{os.stat(path).st_mtime_ns}\n".encode())
            with os.scandir(path) as it:
                for entry in it:
                    (subdirs if entry.is_dir(follow_symlinks=False) else names).append(entry.name)
        except (FileNotFoundError, NotADirectoryError):
            h.update(f"D{rel}\0gone\n".encode())
            continue
        names.sort()
        listing.append((rel, names))
        pending.extend(os.path.join(rel, d) for d in sorted(subdirs, reverse=True))
    n = sum(len(names) for _, names in listing)
    h.update(f"N{n}\n".encode())
    picks = range(n) if n <= sampled_files else sorted({i * n // sampled_files for i in range(sampled_files)})
    picks_iter, offset = iter(picks), 0
    pick = next(picks_iter, None)
    for rel, names in listing:  # only the sampled files' paths are built and statted
        while pick is not None and pick < offset + len(names):
            name = os.path.join(rel, names[pick - offset])
            try:
                st = os.stat(os.path.join(root, name))
                h.update(f"F{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except FileNotFoundError:
                h.update(f"F{name}\0gone\n".encode())
            pick = next(picks_iter, None)
        offset += len(names)
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
