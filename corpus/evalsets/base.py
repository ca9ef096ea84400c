"""The evaluation sample, image references, and the readers the benchmark loaders share (the registry of
benchmarks is `medlvr.corpus.evalsets.registry`).

Images are referenced by URI so samples stay small and picklable (data-parallel ranks, JSONL resume):
    file:///abs/path.png                       an image file
    zip:///abs/archive.zip#member/path.jpg     a member of a zip archive (MedXpertQA images.zip)
    parquet:///abs/file.parquet#row=12&col=image_1
                                               an image cell (HF Image struct {bytes, path} or raw bytes)
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from medlvr.corpus.paths import is_within, safe_path
from medlvr.corpus.records import RecordError

KINDS = ("mc", "yesno", "open")


class BenchmarkError(ValueError):
    """A benchmark directory is missing or malformed; the message says what was expected where."""


@dataclass(frozen=True)
class Sample:
    benchmark: str  # "omnimedvqa", "slake", "vqa_rad", "pmc_vqa", "mmmu_hm", "medxpertqa_mm"
    sample_id: str  # stable within the benchmark
    question: str  # the question text as distributed (options NOT appended unless the benchmark embeds them)
    kind: str  # one of KINDS
    answer: str  # gold: option letter for "mc", "yes"/"no" for "yesno", free text for "open"
    options: tuple[tuple[str, str], ...] = ()  # (letter, text) in order, for "mc"
    images: tuple[str, ...] = ()  # image URIs (see module docstring), in the order the question refers to them
    tags: dict[str, Any] = field(default_factory=dict)  # modality, subset, question_type, source, split, ...

    @property
    def answer_text(self) -> str:
        """The gold option text for multiple choice, else the answer itself."""
        return dict(self.options).get(self.answer, self.answer) if self.kind == "mc" else self.answer


def file_uri(path: Path) -> str:
    return Path(path).resolve().as_uri()


def zip_uri(archive: Path, member: str) -> str:
    return f"zip://{Path(archive).resolve().as_posix()}#{member}"


def parquet_uri(path: Path, row: int, col: str) -> str:
    return f"parquet://{Path(path).resolve().as_posix()}#row={row}&col={col}"


@lru_cache(maxsize=8)
def _zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


@lru_cache(maxsize=4)
def _parquet_table(path: str):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def image_bytes(uri: str) -> bytes:
    u = urlparse(uri)
    if u.scheme == "file":
        return Path(unquote(u.path)).read_bytes()
    if u.scheme == "zip":
        return _zip(unquote(u.path)).read(unquote(u.fragment))
    if u.scheme == "parquet":
        q = parse_qs(u.fragment)
        cell = _parquet_table(unquote(u.path)).column(q["col"][0])[int(q["row"][0])].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data:
            raise BenchmarkError(f"no image bytes in {uri}")
        return data
    raise BenchmarkError(f"unsupported image URI {uri!r}")


def open_image(uri: str):
    """A PIL RGB image for a URI."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes(uri))) as im:
        return im.convert("RGB")


def read_json_list(path: Path, what: str) -> list:
    """A JSON file that must hold a list (SLAKE, VQA-RAD OSF, OmniMedVQA QA files); BenchmarkError otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BenchmarkError(f"{what}: cannot read {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{what}: cannot read {path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise BenchmarkError(f"{what}: {path} must hold a JSON list of records, found {type(data).__name__}")
    return data


def read_parquet_checked(path: Path, what: str, required: tuple[str, ...], columns: list[str] | None = None):
    """The table of a parquet file (all columns, or `columns`) after checking that `required` columns exist."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise BenchmarkError(f"{what}: {path} is not a readable parquet file ({e})") from e
    missing = [c for c in required if c not in names]
    if missing:
        raise BenchmarkError(f"{what}: {path} lacks columns {missing} (expected {list(required)})")
    return pq.read_table(path, columns=columns)


def zip_members_by_name(archive: Path, what: str) -> dict[str, str]:
    """File members of a zip archive keyed by their base name (images are referenced by file name only)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            return {m.rsplit("/", 1)[-1]: m for m in zf.namelist() if not m.endswith("/")}
    except zipfile.BadZipFile as e:
        raise BenchmarkError(f"{what}: {archive} is not a valid zip ({e})") from e


def file_in_root(root: Path, rel: str, what: str) -> Path:
    """`root/rel` for a file a benchmark record names: an absolute path, a `..` component or a symlink (at any
    level) that resolves outside the benchmark root is a BenchmarkError naming the reference, as the loaders do
    for a missing file (corpus.paths.safe_path, the rule the ingest readers follow)."""
    try:
        path = safe_path(Path(root), str(rel))
    except RecordError as e:
        raise BenchmarkError(f"{what}: {e.reason} (refused: outside the benchmark root)") from None
    return path


def files_in_root(folder: Path, root: Path) -> list[Path]:
    """Files under `folder` (recursively) that resolve inside `root`: a symlink out of the root is not offered."""
    return [p for p in sorted(Path(folder).rglob("*")) if p.is_file() and is_within(root, p)]


def require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{what}: directory {root} does not exist")
    return root
