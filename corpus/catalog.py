"""The dataset catalog: one YAML file per dataset under corpus/catalog/, validated on load.

The catalog is data. Adding a 32nd dataset means adding one YAML file that names one of the format adapters
and its options (plus a sample writer registered in corpus/sample_data/ for the offline tests and demo); no
loader code is copied. `load_catalog()` fails loudly on a malformed entry.

Catalog files outside the package: `load_catalog()` also reads every folder listed in the environment variable
MEDLVR_CATALOG_PATH (folders separated by os.pathsep, like PATH), after corpus/catalog/; an id defined twice is
an error. That is how a site adds private datasets, and how the tests add a 32nd one without touching the package.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medlvr.corpus.config import ConfigError, build_config, did_you_mean
from medlvr.corpus.package_data import package_path
from medlvr.corpus.records import unmapped_label_reason

MODALITIES = ("CT", "MRI", "X-ray", "ultrasound", "dermoscopy", "fundus", "OCT", "microscopy")
CATALOG_DIR = package_path("medlvr.corpus", "catalog")
CATALOG_PATH_ENV = "MEDLVR_CATALOG_PATH"  # extra catalog folders (module docstring)
_ID_RE = re.compile(r"^[a-z0-9_]+$")


class CatalogError(ValueError):
    pass


REAL_FORMATS = ("png", "jpeg", "bmp", "tiff", "dicom", "nifti", "nifti_gz", "hdf5", "mhd")


@dataclass(frozen=True)
class RealSize:
    """The real release's figures, as data (`real_size:` of an entry; `medlvr sample-data --scale real` writes the
    synthetic sample at this size, and benchmarks/bench_rehearsal.py projects the full build from `records`)."""

    records: int  # ingest records in the real release (what `ingest` counts as records_in: image, volume, frame)
    format: str  # how the release stores its images: one of REAL_FORMATS
    dtype: str  # numpy name of the stored sample type (uint8, uint16, int16, float32)
    bits_stored: int  # significant bits per sample (DICOM BitsStored; the dtype's width elsewhere)
    source: str  # where the figures come from (paper, official page); "taken as typical" where sizes vary
    height: int = 0  # 2-D images: rows (0 for volume formats)
    width: int = 0  # 2-D images: columns
    volume: tuple[int, ...] = ()  # volume formats: the stored array's shape, in the file's own axis order
    jpeg_quality: int = 0  # JPEG quality the sample is written at (0: not JPEG)

    def __post_init__(self):
        if self.format not in REAL_FORMATS:
            raise ValueError(f"real_size.format {self.format!r} is not one of {REAL_FORMATS}")
        if self.records < 1 or not self.source.strip():
            raise ValueError("real_size needs records >= 1 and a source")
        if bool(self.volume) == bool(self.height and self.width):
            raise ValueError("real_size gives either height and width (2-D images) or volume (volume formats)")


@dataclass(frozen=True)
class DatasetSpec:
    id: str
    name: str
    modality: str
    body_region: str
    adapter: str
    options: dict[str, Any]
    labels: dict[str, str]  # raw label (as the adapter reports it) -> knowledge-graph concept id
    layout: tuple[str, ...]  # globs relative to the dataset root; each must match at least one file
    patient_key: dict[str, Any]  # {"source": "record" | "path_regex" | "image", "pattern": ...}
    official_split: dict[str, Any] | None  # None, {"source": "record"} or {"source": "path_regex", ...}
    normalise: dict[str, Any]  # window / window_by_label / percentiles overrides
    attributes: tuple[str, ...]  # sidecar/metadata keys allowed into the output (everything else dropped)
    licence: str
    citation: str
    homepage: str
    sample: dict[str, Any] = field(default_factory=dict)  # options for the sample-data writer
    # a 2-D multi-frame DICOM (cine loop, multi-frame secondary capture) stands for this frame (0-based), or
    # "reject"; multi-frame volumes (enhanced CT/MR, RT dose) are never a 2-D image (see adapters.images)
    multi_frame: int | str = 0
    # bytes one record of this dataset may make a reader decode (corpus.limits); None: the run's
    # IngestConfig.max_record_bytes. An entry sets it when its records are legitimately larger than that default
    max_record_bytes: int | None = None
    # pixels one 2-D image of this dataset may declare (corpus.limits.check_pixels); None: the run's
    max_image_pixels: int | None = None
    # raw labels of the real release deliberately not used -> why (an ROI with one becomes a reject that says
    # so); together with `labels` this is the release's complete vocabulary, so any other label is a finding
    ignored_labels: dict[str, str] = field(default_factory=dict)
    # the real release's per-image size, dtype, bit depth, format and record count, with their source (RealSize)
    real_size: RealSize | None = None

    def concept(self, raw_label: str) -> str | None:
        return self.labels.get(raw_label)

    def ignored(self, raw_label: str) -> str | None:
        """Why the catalog deliberately leaves `raw_label` out, or None when it does not."""
        return self.ignored_labels.get(raw_label)

    def label_reject_reason(self, raw_label: str) -> str:
        """The reject reason of an object whose label the entry does not map: deliberately ignored (with the
        catalog's reason) or unknown (the label's name is a finding to report)."""
        why = self.ignored(raw_label)
        return f"label {raw_label!r} is ignored by the catalog: {why}" if why else unmapped_label_reason(raw_label)


_REQUIRED = ("id", "name", "modality", "body_region", "adapter", "labels", "layout", "patient_key",
             "licence", "citation", "homepage")


def parse_spec(raw: dict[str, Any], source: str = "<dict>") -> DatasetSpec:
    known = [f.name for f in fields(DatasetSpec)]
    for key in raw:  # before the required keys: a mistyped one is the reason one is missing
        if key not in known:
            raise CatalogError(f"{source}: unknown config key {key}{did_you_mean(key, known)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CatalogError(f"{source}: missing keys {missing}")
    if not _ID_RE.match(str(raw["id"])):
        raise CatalogError(f"{source}: id {raw['id']!r} must be lowercase letters, digits and '_'")
    if raw["modality"] not in MODALITIES:
        raise CatalogError(f"{source}: modality {raw['modality']!r} is not one of {MODALITIES}")
    labels = raw["labels"]
    if not isinstance(labels, dict) or not labels:
        raise CatalogError(f"{source}: labels must be a non-empty mapping raw label -> concept id")
    for k, v in labels.items():
        if not isinstance(v, str) or not v.startswith("kg:"):
            raise CatalogError(f"{source}: label {k!r} maps to {v!r}; concept ids look like 'kg:name'")
    ignored = raw.get("ignored_labels") or {}
    if not isinstance(ignored, dict):
        raise CatalogError(f"{source}: ignored_labels must be a mapping raw label -> reason it is not used")
    for k, v in ignored.items():
        if not isinstance(v, str) or not v.strip():
            raise CatalogError(f"{source}: ignored label {k!r} needs a reason (a non-empty string), got {v!r}")
        if str(k) in {str(x) for x in labels}:
            raise CatalogError(f"{source}: label {k!r} is both mapped and ignored")
    pk = raw["patient_key"]
    if not isinstance(pk, dict) or pk.get("source") not in ("record", "path_regex", "image"):
        raise CatalogError(f"{source}: patient_key.source must be record, path_regex or image")
    if pk["source"] == "path_regex":
        re.compile(pk["pattern"])
    for opts in [raw.get("options") or {}] + list((raw.get("options") or {}).get("variants") or []):
        _check_4d_rule(opts, source)
    split = raw.get("official_split")
    if split is not None and split.get("source") not in ("record", "path_regex"):
        raise CatalogError(f"{source}: official_split.source must be record or path_regex")
    multi_frame = raw.get("multi_frame", 0)
    if multi_frame != "reject" and (isinstance(multi_frame, bool) or not isinstance(multi_frame, int)
                                    or multi_frame < 0):
        raise CatalogError(f"{source}: multi_frame must be a frame index >= 0 or 'reject', got {multi_frame!r}")
    max_record_bytes = raw.get("max_record_bytes")
    if max_record_bytes is not None and (isinstance(max_record_bytes, bool) or not isinstance(max_record_bytes, int)
                                         or max_record_bytes < 1):
        raise CatalogError(f"{source}: max_record_bytes must be a positive number of bytes, got {max_record_bytes!r}")
    max_image_pixels = raw.get("max_image_pixels")
    if max_image_pixels is not None and (isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int)
                                         or max_image_pixels < 1):
        raise CatalogError(f"{source}: max_image_pixels must be a positive number of pixels, got {max_image_pixels!r}")
    # every key through the one config loader, typed by DatasetSpec's fields: an unknown key (`atributes:`) is an
    # error with a did-you-mean, never a silently empty default (a new catalog key is one field of DatasetSpec)
    empty = {"options": {}, "normalise": {}, "attributes": (), "sample": {}, "official_split": None}
    data = {**raw, **{k: v for k, v in empty.items() if raw.get(k) is None},
            "labels": {str(k): v for k, v in labels.items()},
            "ignored_labels": {str(k): v.strip() for k, v in ignored.items()}}
    try:
        return build_config(DatasetSpec, data)
    except ConfigError as e:
        raise CatalogError(f"{source}: {e}") from None


def check_options(spec: DatasetSpec, source: str) -> None:
    """The entry's `options:` (and each of its `variants`) against the adapter's declared options dataclass."""
    from medlvr.corpus.adapters import ADAPTERS  # local import: adapters import this module

    try:
        build_config(ADAPTERS[spec.adapter].options, spec.options, "options")
    except ConfigError as e:
        raise CatalogError(f"{source}: {e}") from None


def catalog_dirs() -> tuple[Path, ...]:
    """corpus/catalog/ and then the folders of MEDLVR_CATALOG_PATH (empty entries ignored)."""
    extra = [Path(p) for p in os.environ.get(CATALOG_PATH_ENV, "").split(os.pathsep) if p]
    for d in extra:
        if not d.is_dir():
            raise CatalogError(f"{CATALOG_PATH_ENV}: {d} is not a directory")
    return (CATALOG_DIR, *extra)


def _check_4d_rule(opts: dict[str, Any], source: str) -> None:
    """The volume adapters' 4-D rule (corpus.adapters.nifti.pick_volume): `volume_index` picks one volume of a
    4-D array read with a 3-D axis_order; it cannot be combined with a channel axis."""
    vi = opts.get("volume_index")
    if vi is not None and (isinstance(vi, bool) or not isinstance(vi, int)):
        raise CatalogError(f"{source}: options.volume_index must be an integer, got {vi!r}")
    if vi is not None and "C" in str(opts.get("axis_order", "")).upper():
        raise CatalogError(f"{source}: options.volume_index reads one volume of a 3-D axis_order; "
                           f"axis_order {opts['axis_order']!r} already reads the last axis as channels")
    ch = opts.get("channel")
    if ch is not None and not isinstance(ch, str):
        raise CatalogError(f"{source}: options.channel must be a channel name, got {ch!r}")


def load_catalog(directory: str | None = None) -> dict[str, DatasetSpec]:
    """All dataset specs keyed by id, in file-name order per folder: `directory` alone, or the package catalog
    plus the MEDLVR_CATALOG_PATH folders. Validates adapters exist."""
    return _load_catalog((Path(directory),) if directory else catalog_dirs())


@lru_cache(maxsize=4)
def _load_catalog(dirs: tuple[Path, ...]) -> dict[str, DatasetSpec]:
    from medlvr.corpus.adapters import ADAPTERS  # local import: adapters import this module

    specs: dict[str, DatasetSpec] = {}
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            spec = parse_spec(yaml.safe_load(path.read_text()), source=path.name)
            if spec.id in specs:
                raise CatalogError(f"{path}: duplicate dataset id {spec.id!r}")
            if spec.adapter not in ADAPTERS:
                raise CatalogError(f"{path.name}: unknown adapter {spec.adapter!r}{did_you_mean(spec.adapter, ADAPTERS)}")
            check_options(spec, path.name)
            specs[spec.id] = spec
    return specs


def select(ids: list[str] | None, catalog: dict[str, DatasetSpec] | None = None) -> list[DatasetSpec]:
    cat = catalog or load_catalog()
    if not ids:
        return list(cat.values())
    unknown = [i for i in ids if i not in cat]
    if unknown:
        raise CatalogError("; ".join(f"unknown dataset id {i!r}{did_you_mean(i, cat)}" for i in unknown)
                           + "; see `medlvr catalog`")
    return [cat[i] for i in ids]


def patient_of(spec: DatasetSpec, source_path: str, record_patient: str | None, record_key: str) -> str:
    """The raw patient identifier of a record according to the catalog's rule (hashed later)."""
    rule = spec.patient_key
    if rule["source"] == "record":
        if record_patient is None:
            raise ValueError(f"{spec.id}: adapter gave no patient for {record_key}")
        return record_patient
    if rule["source"] == "path_regex":
        m = re.search(rule["pattern"], source_path)
        if not m:
            raise ValueError(f"{spec.id}: patient pattern {rule['pattern']!r} does not match {source_path!r}")
        return m.group(1)
    return record_key  # "image": each record is its own group (dedup clusters regroup them later)


def official_split_of(spec: DatasetSpec, source_path: str, record_split: str | None) -> str | None:
    rule = spec.official_split
    if rule is None:
        return None
    if rule["source"] == "record":
        return record_split
    m = re.search(rule["pattern"], source_path)
    if not m:
        return None
    value = m.group(1)
    return rule.get("map", {}).get(value, value)
