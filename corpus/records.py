"""The records that flow through ingestion, from a discovered source item to normalised rows.

discover (cheap, main process)  ->  RecordRef            one source item: a file, a volume, a CSV group
load     (heavy, worker)        ->  list[SourceImage]    2-D images in original pixel coordinates with ROIs
normalise                       ->  image row + ROI rows (see corpus.tables for the Parquet schemas)

A record either succeeds or becomes a Reject with a stage and a reason; nothing is dropped silently.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

# Intensity kinds tell the normaliser what the pixel values mean.
#   "ct_hu"     : Hounsfield units; windowed with SourceImage.window or the dataset's window
#   "window"    : any scalar image with an explicit (low, high) window already chosen by the adapter
#   "percentile": scalar image clipped at the dataset's percentiles of its non-zero pixels
#   "uint8"     : already display-ready 8-bit (grey HxW or RGB HxWx3)
INTENSITY_KINDS = ("ct_hu", "window", "percentile", "uint8")
ROI_ORIGINS = ("box", "mask", "polygon")


class RecordError(Exception):
    """A record cannot be used. The message is the reason written to the rejects table."""

    def __init__(self, reason: str, stage: str = "load", roi_rejects: list[tuple[str, ...]] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage
        # the source objects the record had found before it failed, each with its own reason: (label, reason,
        # source_object). They become ROI reject rows, so that a rejected record still accounts for its objects.
        self.roi_rejects = list(roi_rejects or [])


@dataclass
class RecordRef:
    """One discovered source item. Must be small and picklable: it crosses into worker processes.

    key:    unique within the dataset; used for reconciliation and error messages.
    paths:  role -> path relative to the dataset root (posix), already checked to stay inside the root.
    annotations: adapter-specific plain data (e.g. box rows) gathered during discovery.
    patient: raw patient identifier (hashed before output), or None to use the catalog's patient rule.
    split:  official split name if the dataset defines one.
    """

    key: str
    paths: dict[str, str]
    annotations: Any = None
    patient: str | None = None
    split: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceROI:
    """A region in original pixel coordinates, boxes as pixel-edge xyxy floats."""

    label: str  # raw label as the dataset names it (mapped to a concept id through the catalog)
    box: tuple[float, float, float, float]
    origin: str  # one of ROI_ORIGINS
    instance: int = 0  # index of the source object in its source (row, object, component), never among kept boxes
    area_px: float | None = None  # mask/polygon area in original pixels, else box area
    parent: str | None = None  # raw label of the enclosing structure (hierarchy rules), if any
    attributes: dict[str, Any] = field(default_factory=dict)
    source_object: str = ""  # the annotation object this box comes from (object_id); "" = the adapter names none


@dataclass
class SourceImage:
    """One 2-D image before normalisation."""

    source_path: str  # relative to the dataset root
    pixels: np.ndarray  # HxW or HxWx3
    intensity: str  # one of INTENSITY_KINDS
    rois: list[SourceROI] = field(default_factory=list)
    suffix: str = ""  # distinguishes several images from one source (slice, frame, sequence)
    window: tuple[float, float] | None = None
    window_name: str | None = None
    spacing_mm: tuple[float, ...] | None = None
    slice_index: int | None = None
    slice_axis: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    patient: str | None = None  # raw patient id found while loading (e.g. DICOM PatientID); hashed before output
    # source objects dropped in load: (label, reason) or (label, reason, source_object)
    roi_rejects: list[tuple[str, ...]] = field(default_factory=list)
    # every annotation object the adapter found for this image, as object_id strings, enumerated from the source
    # before any filter; None: the objects named by its ROIs and ROI rejects (see docs/datasets.md, accounting)
    objects: list[str] | None = None


_UNMAPPED = re.compile(r"label ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") is not in the catalog label map")


def unmapped_label_reason(label: str) -> str:
    """The one wording of an object whose label the catalog does not map (the label's name is the finding)."""
    return f"label {label!r} is not in the catalog label map"


def unmapped_label_of(reason: str) -> str | None:
    """The label named by an `unmapped_label_reason` inside a reject reason, else None."""
    import ast

    m = _UNMAPPED.search(reason)
    return ast.literal_eval(m.group(1)) if m else None


def object_id(path: str, **parts: Any) -> str:
    """The stable identity of one source annotation object: its file relative to the dataset root, then what
    picks the object out inside it, e.g. `annotations.csv#row=12` or `case_00002/seg.nii.gz#label=tumor/component=1`.
    Parts are positions, label names and indices, never a value copied from an identifying column."""
    inner = "/".join(f"{k}={v}" for k, v in parts.items())
    if not inner:
        return path
    return f"{path}/{inner}" if "#" in path else f"{path}#{inner}"  # parts of an object already named


@dataclass
class Reject:
    dataset: str
    source_path: str
    stage: str  # discover | load | normalise | roi | write
    reason: str
    record_key: str = ""


# Reasons are fixed wording plus details (paths, counts, header keywords, quoted values). Their kind is the wording
# with the details replaced, so that 20 missing files count as one kind, not 20 reasons at count 1.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_FILE_EXT = r"png|jpe?g|bmp|tiff?|gif|dcm|dicom|ima|nii|nii\.gz|hdr|img|mhd|mha|raw|zraw|mgz|mgh|nrrd|csv|tsv|json|xml|txt|npy|npz|h5|svs|ndpi|zip|gz"
# a file name with a known extension, or a slash-separated token with a digit, '_', '.' or '-' in it or a trailing
# '/' (so prose such as "and/or" or "w/o" stays)
_PATH_TOKEN = re.compile(rf"(?<![\w/.])(?:[\w.\-]*(?:/[\w.\-]+)+\.(?:{_FILE_EXT})|[\w.\-]+\.(?:{_FILE_EXT})"
                         rf"|(?=[\w.\-/]*[\d_.\-])[\w.\-]*(?:/[\w.\-]+)+/?|[\w.\-]+(?:/[\w.\-]+)*/)(?![\w/])",
                         re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# an absolute POSIX path: a '/' that does not follow a word character or a dot, then path characters
_ABSOLUTE = re.compile(r"(?<![\w.])/[^\s'\",;:()\[\]{}<>|]+")


def reason_kind(reason: str) -> str:
    """The fixed wording of a reason: quoted values -> '…', paths and file names -> <path>, numbers -> N."""
    text = _QUOTED.sub("'…'", reason)
    text = _PATH_TOKEN.sub("<path>", text)
    return _NUMBER.sub("N", text)


def relative_reason(text: str, root: Path | str) -> str:
    """`text` (a reason or a source path) with every path relative to the dataset root: the root's own spellings
    (as given, absolute, resolved) are cut off, and any other absolute path (a file a library named outside the
    root) is cut to its file name. Applied to every reason and source path before it is written anywhere."""
    root = str(root)
    for prefix in sorted({root, os.path.abspath(root), os.path.realpath(root)}, key=len, reverse=True):
        prefix = prefix.rstrip("/")
        if prefix and prefix != ".":
            text = text.replace(prefix + "/", "").replace(prefix, ".")
    return _ABSOLUTE.sub(lambda m: PurePosixPath(m.group()).name or ".", text)
