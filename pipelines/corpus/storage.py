"""Mirror parts of a corpus folder between a local staging folder and an fsspec filesystem (s3://, gs://, ...).

The corpus library works on local paths; for remote storage the assets stage what they read and write locally
(`CorpusStorage.workdir`). Files are compared by fsspec checksum (an ETag on S3), recorded in
`<stage>/.sync-index.json`, so unchanged files are not downloaded again. A pushed folder replaces the remote one
(remote files it no longer has are deleted); `manifest.json` files are uploaded last so a reader never sees a
manifest before its shards. Temporary folders of the atomic writers (`.x.tmp-*`, `.x.old-*`) are never synced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

INDEX = ".sync-index.json"


def is_local_url(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(url: str) -> Path:
    return Path(urlparse(url).path if url.startswith("file://") else url).expanduser()


def _skip(rel: str) -> bool:
    return any(part.startswith(".") and (".tmp" in part or ".old-" in part) for part in rel.split("/"))


def _load_index(stage: Path) -> dict[str, str]:
    p = stage / INDEX
    return json.loads(p.read_text()) if p.exists() else {}


def _save_index(stage: Path, index: dict[str, str]) -> None:
    tmp = stage / f"{INDEX}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(index, sort_keys=True))
    tmp.replace(stage / INDEX)


def _remote_files(fs, root: str, rel: str) -> list[str]:
    path = f"{root.rstrip('/')}/{rel}"
    if not fs.exists(path):
        return []
    if fs.isfile(path):
        return [rel]
    base = fs._strip_protocol(root).rstrip("/") + "/"
    return sorted(p[len(base):] for p in (fs._strip_protocol(q) for q in fs.find(path)) if not _skip(p[len(base):]))


def _local_files(stage: Path, rel: str) -> list[str]:
    p = stage / rel
    if p.is_file():
        return [rel]
    if not p.is_dir():
        return []
    return sorted(q.relative_to(stage).as_posix() for q in p.rglob("*")
                  if q.is_file() and not _skip(q.relative_to(stage).as_posix()))


def pull(fs, root: str, stage: Path, paths: Iterable[str]) -> list[str]:
    """Fetch `paths` (files or folders relative to `root`) into `stage`; local files under a pulled folder that
    the remote lacks are removed. Returns the files downloaded."""
    index, got = _load_index(stage), []
    for rel in paths:
        remote = _remote_files(fs, root, rel)
        for f in remote:
            rp = f"{root.rstrip('/')}/{f}"
            ck = str(fs.checksum(rp))
            lp = stage / f
            if index.get(f) == ck and lp.exists():
                continue
            lp.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(rp, str(lp))
            index[f] = ck
            got.append(f)
        for f in set(_local_files(stage, rel)) - set(remote):
            (stage / f).unlink()
            index.pop(f, None)
    _save_index(stage, index)
    return got


def push(fs, root: str, stage: Path, paths: Iterable[str]) -> list[str]:
    """Upload `paths` (files or folders relative to `stage`); remote files under a pushed folder that the stage
    lacks are deleted. Returns the files uploaded."""
    index, sent = _load_index(stage), []
    for rel in paths:
        local = _local_files(stage, rel)
        for f in sorted(local, key=lambda f: (f.endswith("manifest.json"), f)):
            rp = f"{root.rstrip('/')}/{f}"
            fs.makedirs(rp.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(stage / f), rp)
            index[f] = str(fs.checksum(rp))
            sent.append(f)
        for f in set(_remote_files(fs, root, rel)) - set(local):
            fs.rm(f"{root.rstrip('/')}/{f}")
            index.pop(f, None)
    _save_index(stage, index)
    return sent
