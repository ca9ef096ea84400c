"""Reading 2-D pixels: PIL formats (PNG incl. 16-bit, JPEG, BMP, TIFF) and single-frame DICOM.

Every adapter reads pixels through `read_2d`, so corrupt or odd files fail the same way everywhere: with a
RecordError naming the file and the problem.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medlvr.corpus.records import RecordError

DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass
class Pixels:
    array: np.ndarray
    intensity: str  # see corpus.records.INTENSITY_KINDS
    window: tuple[float, float] | None = None
    window_name: str | None = None
    spacing_mm: tuple[float, float] | None = None
    patient: str | None = None  # raw identifier, only for the salted patient key
    attributes: dict[str, Any] = field(default_factory=dict)


def read_pil(path: Path, *, mode: str | None = None) -> np.ndarray:
    """Pixels of a PIL-readable file. 8-bit stays uint8; 16-bit stays uint16; palette/alpha images are
    converted (RGBA -> RGB, LA -> L, P -> RGB), `mode` forces a conversion ("L", "RGB")."""
    try:
        with Image.open(path) as im:
            im.load()
            if mode:
                im = im.convert(mode)
            elif im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode in ("LA", "1"):
                im = im.convert("L")
            elif im.mode == "I;16B":
                im = im.convert("I;16")
            arr = np.asarray(im)
    except FileNotFoundError:
        raise RecordError(f"file referenced but missing: {path.name}")
    except UnidentifiedImageError:
        raise RecordError(f"not a readable image (corrupt or unknown format): {path.name}")
    except (OSError, SyntaxError, ValueError) as e:
        raise RecordError(f"corrupt or truncated image {path.name}: {e}")
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha stored as two channels
        arr = arr[:, :, 0]
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)
    return arr


def read_dicom(path: Path, *, ct: bool = False) -> Pixels:
    """A single-frame DICOM: modality LUT (slope/intercept), then either HU for CT (window chosen later)
    or the header's VOI window / VOI LUT for X-ray, with MONOCHROME1 inverted. Compressed transfer syntaxes
    are decoded when a decoder is installed, otherwise rejected with the syntax named."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except FileNotFoundError:
        raise RecordError(f"file referenced but missing: {path.name}")
    except InvalidDicomError as e:
        raise RecordError(f"not a valid DICOM file {path.name}: {e}")
    except Exception as e:  # a truncated header makes pydicom raise struct/EOF/value errors of several kinds
        raise RecordError(f"not a valid DICOM file {path.name} (corrupt or truncated header): "
                          f"{type(e).__name__}: {e}")
    if "PixelData" not in ds:
        # pydicom stops quietly at a file cut inside the header: say that it may be truncated
        raise RecordError(f"DICOM without pixel data (not an image, or truncated): {path.name}")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except Exception as e:  # pydicom raises several types for unsupported or broken pixel data
        name = getattr(ts, "name", str(ts))
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecordError(f"cannot decode DICOM pixel data of {path.name} (transfer syntax {name}): {first_line}")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 or raw.ndim not in (2, 3):
        raise RecordError(f"multi-frame DICOM not supported as a 2-D image: {path.name} shape {raw.shape}")
    bits = int(getattr(ds, "BitsStored", 0) or 0)
    if raw.dtype.kind == "u" and 0 < bits < raw.dtype.itemsize * 8 and raw.max(initial=0) >> bits:
        # bits above BitsStored (overlays, garbage) are not part of the value; pydicom 3 already masks them,
        # this keeps the rule explicit whatever the decoder did
        raw = raw & np.asarray((1 << bits) - 1, dtype=raw.dtype)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if raw.shape[:2] != (rows, cols) or min(rows, cols) < 1:
        raise RecordError(f"DICOM pixel array {raw.shape} does not match Rows x Columns {rows}x{cols}: {path.name}")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    attrs = {"photometric": photometric, "bits_stored": int(getattr(ds, "BitsStored", 0) or 0),
             "dicom_modality": str(getattr(ds, "Modality", ""))}
    spacing = None
    ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    if ps is not None and len(ps) == 2:
        spacing = (float(ps[0]), float(ps[1]))
    patient = str(ds.PatientID) if getattr(ds, "PatientID", None) else None
    if raw.ndim == 3:  # RGB DICOM (rare for these datasets): display-ready
        if photometric not in ("RGB",):
            raise RecordError(f"unsupported colour DICOM ({photometric}): {path.name}")
        return Pixels(raw.astype(np.uint8), "uint8", spacing_mm=spacing, patient=patient, attributes=attrs)
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    if not np.isfinite(values).all():
        raise RecordError(f"DICOM pixel values are not finite: {path.name}")
    if ct:
        return Pixels(values, "ct_hu", spacing_mm=spacing, patient=patient, attributes=attrs)
    window = None
    name = None
    if "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float32)
        name = "voi_lut"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        c = ds.WindowCenter
        w = ds.WindowWidth
        try:  # several windows: the first is the primary one
            c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
            w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
        except (TypeError, ValueError, IndexError):
            c, w = 0.0, 0.0  # unusable header window: fall back to percentiles
        if w > 1 and np.isfinite(c) and np.isfinite(w):
            window, name = (c - w / 2.0, c + w / 2.0), "dicom_voi"
    if photometric == "MONOCHROME1":
        # invert so that dense structures are bright; keep the window where it was: v -> lo+hi-v
        lo, hi = window if window else (float(values.min()), float(values.max()))
        values = (lo + hi) - values
        attrs["inverted"] = True
    if window is None:
        return Pixels(values, "percentile", window_name=name, spacing_mm=spacing, patient=patient, attributes=attrs)
    return Pixels(values, "window", window=window, window_name=name, spacing_mm=spacing, patient=patient,
                  attributes=attrs)


def read_2d(path: Path, *, ct: bool = False, mode: str | None = None) -> Pixels:
    """Any 2-D image file: DICOM by suffix, everything else through PIL (8-bit as uint8, 16-bit percentile)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, ct=ct)
    arr = read_pil(path, mode=mode)
    if arr.dtype == np.uint8:
        return Pixels(arr, "uint8")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RecordError(f"image contains NaN or infinite values: {path.name}")
    return Pixels(arr, "percentile")
