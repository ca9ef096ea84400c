"""Corpus shards: Parquet (zstd, image bytes inline), one folder per split, a manifest with checksums.

    <out>/shards/_manifest.json
    <out>/shards/<split>/part-00000.parquet ...

The shard set is written into a hidden temporary folder and published in one atomic step (`publish_dir`), so a rebuild never
exposes half a shard set. Rows are written in the order given (deterministic upstream), files carry no
timestamps, so unchanged inputs and config give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medlvr.corpus.tables import leftover_name, publish_dir, recover_published

# 2: Hugging Face names: the image column is `image` (was `image_png`), the validation split `validation` (was `val`)
SHARD_SCHEMA_VERSION = 2
IMAGE_COLUMN = "image"  # PNG bytes; the card declares it an `image` feature, so `datasets` decodes it
MANIFEST_NAME = "_manifest.json"  # leading "_": pyarrow.dataset and HF datasets skip it when reading the folder
QA_SCHEMA = pa.schema([
    pa.field("qa_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("modality", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("question_type", pa.string(), nullable=False),
    # may contain {box0}.. placeholders: indices into `boxes`, rendered in a model's syntax at training / export
    # (medlvr.corpus.qa.export.render_qwen), as the coordinates depend on the model processor's pixel budget
    pa.field("question", pa.string(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("options", pa.list_(pa.string())),
    pa.field("answer_index", pa.int32()),
    pa.field("boxes", pa.list_(pa.list_(pa.float64()))),  # xyxy in the normalised image
    pa.field("answer_is_box", pa.bool_(), nullable=False),
    pa.field("concept_ids", pa.list_(pa.string())),
    pa.field("knowledge_only", pa.bool_(), nullable=False),
    pa.field("caption", pa.string()),  # VLM region description (verified), if any
    pa.field("text_source", pa.string(), nullable=False),  # template | <model id> (paraphrased)
    pa.field("patient_key", pa.string(), nullable=False),
    pa.field("dup_group", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field(IMAGE_COLUMN, pa.binary(), nullable=False),
], metadata={"medlvr_schema_version": str(SHARD_SCHEMA_VERSION), "table": "qa_shards"})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ShardWriter:
    """Streams rows into per-split shard files; a row group is flushed at `row_group_bytes` of image data and a
    new file is started at `shard_rows` rows."""

    def __init__(self, out_dir: Path, row_group_bytes: int = 128 * 2**20, shard_rows: int = 200_000):
        self.out_dir = Path(out_dir)
        self.final = self.out_dir / "shards"
        self.tmp = leftover_name(self.final, "tmp")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        recover_published(self.final)  # a kill in an earlier publish: restore the old version, drop leftovers
        self.tmp.mkdir()
        self.row_group_bytes, self.shard_rows = row_group_bytes, shard_rows
        self._open: dict[str, dict[str, Any]] = {}
        self.files: list[dict[str, Any]] = []
        self.counts: dict[str, Counter] = {k: Counter() for k in ("dataset", "modality", "question_type", "split")}
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        split = row["split"]
        st = self._open.get(split)
        if st is None or st["rows"] >= self.shard_rows:
            if st is not None:
                self._close(split)
            st = self._new_file(split)
        st["buf"].append(row)
        st["buf_bytes"] += len(row[IMAGE_COLUMN])
        st["rows"] += 1
        self.rows += 1
        for k in self.counts:
            self.counts[k][row[k]] += 1
        if st["buf_bytes"] >= self.row_group_bytes:
            self._flush(st)

    def _options(self) -> dict[str, Any]:
        """Rows are grouped by image (about ten pairs each), so the image column is dictionary-encoded with a
        dictionary as large as a row group: each image is stored once per row group, not once per pair.
        Readers (pyarrow, HF datasets) get plain binary back."""
        # zstd on the (deduplicated) images too: PNGs are written at zlib level 1 for speed, zstd recovers part
        # of the difference at little cost once each image is stored once per row group.
        return {"compression": "zstd", "use_dictionary": True,
                "dictionary_pagesize_limit": self.row_group_bytes + (8 << 20),
                "write_statistics": [n for n in QA_SCHEMA.names if n != IMAGE_COLUMN]}

    def _new_file(self, split: str) -> dict[str, Any]:
        n = sum(1 for f in self.files if f["split"] == split)
        path = self.tmp / split / f"part-{n:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        st = {"path": path, "writer": pq.ParquetWriter(path, QA_SCHEMA, **self._options()), "buf": [],
              "buf_bytes": 0, "rows": 0, "split": split}
        self._open[split] = st
        return st

    def _flush(self, st) -> None:
        if st["buf"]:
            st["writer"].write_table(pa.Table.from_pylist(st["buf"], schema=QA_SCHEMA))
            st["buf"], st["buf_bytes"] = [], 0

    def _close(self, split: str) -> None:
        st = self._open.pop(split)
        self._flush(st)
        st["writer"].close()
        self.files.append({"split": split, "path": st["path"].relative_to(self.tmp).as_posix(), "rows": st["rows"]})

    def commit(self, extra: dict[str, Any]) -> Path:
        for split in sorted(self._open):
            self._close(split)
        for f in self.files:
            p = self.tmp / f["path"]
            f["bytes"] = p.stat().st_size
            f["sha256"] = sha256_file(p)
        manifest = {
            "schema_version": SHARD_SCHEMA_VERSION, "rows": self.rows,
            "counts": {k: dict(sorted(v.items())) for k, v in self.counts.items()},
            "shards": sorted(self.files, key=lambda f: f["path"]), **extra,
        }
        (self.tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        return publish_dir(self.tmp, self.final)

    def abort(self) -> None:
        import shutil

        for st in self._open.values():
            try:
                st["writer"].close()
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def verify_manifest(shard_dir: Path) -> list[str]:
    """Problems found comparing every shard's checksum and row count with the manifest (empty list = good)."""
    shard_dir = Path(shard_dir)
    manifest = json.loads((shard_dir / MANIFEST_NAME).read_text())
    problems = []
    listed = set()
    for f in manifest["shards"]:
        p = shard_dir / f["path"]
        listed.add(f["path"])
        if not p.exists():
            problems.append(f"missing shard {f['path']}")
            continue
        if sha256_file(p) != f["sha256"]:
            problems.append(f"checksum mismatch {f['path']}")
        try:
            rows = pq.ParquetFile(p).metadata.num_rows
        except Exception as e:  # a truncated or corrupt file is a finding, not a crash
            problems.append(f"unreadable shard {f['path']}: {type(e).__name__}: {e}")
            continue
        if rows != f["rows"]:
            problems.append(f"row count mismatch {f['path']}")
    for p in shard_dir.rglob("*.parquet"):
        if p.relative_to(shard_dir).as_posix() not in listed:
            problems.append(f"shard not in manifest {p.relative_to(shard_dir).as_posix()}")
    return problems
