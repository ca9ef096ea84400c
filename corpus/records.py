"""The records that flow through ingestion, from a discovered source item to normalised rows.

discover (cheap, main process)  ->  RecordRef            one source item: a file, a volume, a CSV group
load     (heavy, worker)        ->  list[SourceImage]    2-D images in original pixel coordinates with ROIs
normalise                       ->  image row + ROI rows (see corpus.tables for the Parquet schemas)

A record either succeeds or becomes a Reject with a stage and a reason; nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

    def __init__(self, reason: str, stage: str = "load"):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


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
    instance: int = 0
    area_px: float | None = None  # mask/polygon area in original pixels, else box area
    parent: str | None = None  # raw label of the enclosing structure (hierarchy rules), if any
    attributes: dict[str, Any] = field(default_factory=dict)


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
    roi_rejects: list[tuple[str, str]] = field(default_factory=list)  # (label, reason) dropped in load


@dataclass
class Reject:
    dataset: str
    source_path: str
    stage: str  # discover | load | normalise | roi | write
    reason: str
    record_key: str = ""
