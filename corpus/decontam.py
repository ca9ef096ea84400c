"""Decontamination: remove corpus images that perceptually match an image of an evaluation benchmark.

The six benchmarks (docs/benchmarks.md §1) reach the disk in several forms, all handled here:
  * image folders (OmniMedVQA `Images/...`, unpacked SLAKE `imgs/`, VQA-RAD's OSF image folder, PMC `figures/`);
  * Parquet files whose columns hold images (VQA-RAD `image`, MMMU `image_1`..`image_7`): a Hugging Face Image
    struct {bytes, path} or a plain binary column holding encoded image bytes;
  * zip archives with image members (OmniMedVQA.zip, SLAKE imgs.zip, PMC images.zip, MedXpertQA images.zip).
Other files (JSON, CSV, ...) are ignored. A file or member that looks like an image but cannot be decoded is
counted as unreadable, never fatal. A HF Image struct with null bytes (path only) is skipped: the file it names is
scanned as a plain file if it is present under the root.

The benchmark side is materialised in a HashIndex (benchmarks are far smaller than the corpus); the corpus rows
are streamed against it, so memory does not grow with the corpus.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medlvr.corpus.dedup import DEFAULT_RADIUS, HashIndex, decode_image, phash

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Leading bytes of encoded images, used to recognise image payloads in binary Parquet columns.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"GIF8", b"RIFF")
MAX_UNREADABLE_REFS = 50  # per benchmark, kept in the report for inspection


@dataclass(frozen=True)
class Match:
    image_id: str
    benchmark: str
    ref: str  # where the benchmark image lives: "rel/path.png", "file.parquet#column[row]", "archive.zip!member"
    distance: int


@dataclass
class DecontamReport:
    """Per benchmark: images hashed, files / members / cells that failed to decode, corpus images matched."""
    scanned: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    unreadable_refs: dict[str, list[str]] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)  # distinct corpus images matching this benchmark
    missing_roots: list[str] = field(default_factory=list)
    corpus_images: int = 0
    contaminated_images: int = 0  # distinct corpus images matching any benchmark (to remove)

    def count_scanned(self, bench: str) -> None:
        self.scanned[bench] = self.scanned.get(bench, 0) + 1

    def count_unreadable(self, bench: str, ref: str) -> None:
        self.unreadable[bench] = self.unreadable.get(bench, 0) + 1
        refs = self.unreadable_refs.setdefault(bench, [])
        if len(refs) < MAX_UNREADABLE_REFS:
            refs.append(ref)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------------- scanning

def _hash_bytes(data: bytes) -> int:
    return phash(decode_image(data))


def _scan_zip(bench: str, path: Path, rel: str, report: DecontamReport) -> Iterator[tuple[str, str, int]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        report.count_unreadable(bench, f"{rel} ({type(e).__name__})")
        return
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            if info.is_dir() or not name.lower().endswith(IMAGE_SUFFIXES) or "__MACOSX/" in name:
                continue
            ref = f"{rel}!{name}"
            try:
                h = _hash_bytes(zf.read(info))
            except Exception as e:  # noqa: BLE001 - any decode failure is counted, not fatal
                report.count_unreadable(bench, f"{ref} ({type(e).__name__})")
                continue
            report.count_scanned(bench)
            yield bench, ref, h


def _image_columns(schema: pa.Schema) -> list[tuple[str, str]]:
    """[(column, kind)] with kind "struct" (a struct with a binary `bytes` field: HF Image) or "binary"."""
    out = []
    for f in schema:
        t = f.type
        if pa.types.is_struct(t):
            idx = t.get_field_index("bytes")
            if idx >= 0 and (pa.types.is_binary(t.field(idx).type) or pa.types.is_large_binary(t.field(idx).type)):
                out.append((f.name, "struct"))
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            out.append((f.name, "binary"))
    return out


def _scan_parquet(bench: str, path: Path, rel: str, report: DecontamReport,
                  batch_size: int = 64) -> Iterator[tuple[str, str, int]]:
    try:
        pf = pq.ParquetFile(path)
        cols = _image_columns(pf.schema_arrow)
    except Exception as e:  # noqa: BLE001
        report.count_unreadable(bench, f"{rel} ({type(e).__name__})")
        return
    if not cols:
        return
    row0 = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size, columns=[c for c, _ in cols]):
            data = batch.to_pydict()
            for name, kind in cols:
                for k, cell in enumerate(data[name]):
                    raw = cell.get("bytes") if kind == "struct" and cell is not None else cell
                    if raw is None:
                        continue  # empty cell, or an HF Image that only names a path
                    if kind == "binary" and not raw.startswith(IMAGE_MAGIC):
                        continue  # a binary column that does not hold an image
                    ref = f"{rel}#{name}[{row0 + k}]"
                    try:
                        h = _hash_bytes(raw)
                    except Exception as e:  # noqa: BLE001
                        report.count_unreadable(bench, f"{ref} ({type(e).__name__})")
                        continue
                    report.count_scanned(bench)
                    yield bench, ref, h
            row0 += batch.num_rows
    except Exception as e:  # noqa: BLE001 - a corrupt row group ends this file, counted once
        report.count_unreadable(bench, f"{rel} after row {row0} ({type(e).__name__})")


def scan_benchmark_images(roots: dict[str, Path], report: DecontamReport | None = None
                          ) -> Iterator[tuple[str, str, int]]:
    """Yield (benchmark, ref, phash) for every image found under each benchmark root (a folder, or a single
    image / parquet / zip file). Walks in sorted order, so the output is deterministic. Missing roots are
    recorded in the report and skipped. Counts go to `report` (pass one to read them afterwards)."""
    report = report if report is not None else DecontamReport()
    for bench in sorted(roots):
        root = Path(roots[bench])
        report.scanned.setdefault(bench, 0)
        report.unreadable.setdefault(bench, 0)
        if not root.exists():
            report.missing_roots.append(f"{bench}: {root}")
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            rel = path.name if path == root else path.relative_to(root).as_posix()
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                try:
                    h = _hash_bytes(path.read_bytes())
                except Exception as e:  # noqa: BLE001
                    report.count_unreadable(bench, f"{rel} ({type(e).__name__})")
                    continue
                report.count_scanned(bench)
                yield bench, rel, h
            elif suffix == ".parquet":
                yield from _scan_parquet(bench, path, rel, report)
            elif suffix == ".zip":
                yield from _scan_zip(bench, path, rel, report)


# ------------------------------------------------------------------------------------------- matching

def find_contaminated(corpus_rows: Iterable[tuple[str, int]], bench: Iterable[tuple[str, str, int]],
                      radius: int = DEFAULT_RADIUS, report: DecontamReport | None = None,
                      batch_size: int = 4096) -> list[Match]:
    """corpus_rows: (image_id, phash), streamed; bench: (benchmark, ref, phash), materialised in a HashIndex.
    Returns every (corpus image, benchmark image) pair within Hamming `radius`, sorted by (image_id, benchmark,
    ref), without repeats when an image_id is listed twice. Fills report.matched / corpus_images (rows
    read) / contaminated_images when a report is given."""
    refs: list[tuple[str, str]] = []
    index = HashIndex(radius)
    for benchmark, ref, h in bench:
        refs.append((benchmark, ref))
        index.add(h)
    found: set[Match] = set()
    n_corpus = 0
    batch: list[tuple[str, int]] = []

    def flush() -> None:
        qi, pos, dist = index.query_many([h for _, h in batch])
        for q, p, d in zip(qi.tolist(), pos.tolist(), dist.tolist()):
            benchmark, ref = refs[p]
            found.add(Match(batch[q][0], benchmark, ref, d))
        batch.clear()

    for image_id, h in corpus_rows:  # streamed in batches of `batch_size` vectorised queries
        n_corpus += 1
        batch.append((image_id, h))
        if len(batch) >= batch_size:
            flush()
    flush()
    matches = sorted(found, key=lambda m: (m.image_id, m.benchmark, m.ref))
    per_bench: dict[str, set[str]] = {}
    for m in matches:
        per_bench.setdefault(m.benchmark, set()).add(m.image_id)
    if report is not None:
        report.corpus_images += n_corpus
        for benchmark in {b for b, _ in refs} | set(report.scanned):
            report.matched[benchmark] = len(per_bench.get(benchmark, ()))
        report.matched = dict(sorted(report.matched.items()))
        report.contaminated_images += len({m.image_id for m in matches})
    return matches
