"""Reading 2-D pixels: PIL formats (PNG incl. 16-bit, JPEG, BMP, TIFF) and DICOM (grey, colour, multi-frame).

Every adapter reads pixels through `read_2d`, so corrupt or odd files fail the same way everywhere: with a
RecordError naming the file and the problem.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medlvr.corpus.limits import charge, check_pixels
from medlvr.corpus.paths import open_confined
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


_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"]+/)+([^\s/'\"]+)")


def one_line_cause(error: BaseException) -> str:
    """The whole message of a library error on one line (plugins list their causes on the lines after a
    colon), absolute paths cut to their last part, no trailing ':'."""
    text = " ".join(str(error).split())
    text = _ABS_PATH.sub(r"\1", text).rstrip(" :")
    return text or type(error).__name__


# bytes per pixel of the PIL modes as decoded (unknown modes count 4 per band)
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4,
               "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _open_image(f) -> Image.Image:
    """Image.open (the header only), without Pillow's bomb warning: check_pixels decides, with a reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(f)


def _largest_page(im: Image.Image) -> tuple[int, int]:
    """(width, height) of the largest page of a TIFF (pages and pyramid levels), read from each page's IFD
    (Pillow's TIFF seek parses the IFD, decodes nothing); the file is left at its first page, the one read_pil
    decodes. Other multi-frame formats (GIF, APNG) draw every frame on one canvas of the header's size, and
    seeking them may decode: their canvas size is the one that counts."""
    w, h = im.size
    if im.format != "TIFF":
        return w, h
    for i in range(1, getattr(im, "n_frames", 1)):
        im.seek(i)
        if im.size[0] * im.size[1] > w * h:
            w, h = im.size
    if im.n_frames > 1:
        im.seek(0)
    return w, h


def read_pil(path: Path, *, mode: str | None = None, root: Path | None = None) -> np.ndarray:
    """Pixels of a PIL-readable file. 8-bit stays uint8; 16-bit stays uint16; palette/alpha images are
    converted (RGBA -> RGB, LA -> L, P -> RGB), `mode` forces a conversion ("L", "RGB"). The file is opened
    confined to `root` (default: its own folder). From the header, before any pixel is decoded: the largest
    page's width x height against the pixel limit, the first page's declared bytes against the record limit.
    Pillow's own refusal (twice its Image.MAX_IMAGE_PIXELS) still applies above a raised max_image_pixels."""
    name = _rel_name(path, root)
    try:
        with open_confined(root or path.parent, path) as f, _open_image(f) as im:
            w, h = im.size
            charge(w * h * _MODE_BYTES.get(im.mode, 4 * len(im.getbands())),
                   f"{path.name}: {w}x{h} {im.mode} image")
            pw, ph = _largest_page(im)
            check_pixels(pw * ph, f"{name}: {pw}x{ph} {im.mode} image"
                         + (f" (largest of {im.n_frames} pages)" if im.format == "TIFF" and im.n_frames > 1 else ""))
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
    except Image.DecompressionBombError as e:
        raise RecordError(f"image larger than the decompression-bomb limit {path.name}: {one_line_cause(e)}")
    except (OSError, SyntaxError, ValueError) as e:
        raise RecordError(f"corrupt or truncated image {path.name}: {one_line_cause(e)}")
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha stored as two channels
        arr = arr[:, :, 0]
    if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)
    return arr


def _rel_name(path: Path, root: Path | None) -> str:
    """The file as a reject reason names it: relative to the dataset root, else its name."""
    try:
        return path.relative_to(root).as_posix() if root is not None else path.name
    except ValueError:
        return path.name


# ------------------------------------------------------------------------------------------------- DICOM
# Multi-frame SOP classes whose frames are slices of one volume (each frame has its own plane position).
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR",
    "1.2.840.10008.5.1.4.1.1.128.1": "Legacy Converted Enhanced PET",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
}
# Transfer syntaxes the installed decoders read (pydicom natively, pylibjpeg + libjpeg/openjpeg/rle plugins).
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
def _int_tag(ds, name: str, default: int) -> int:
    try:
        return int(getattr(ds, name, default) or default)
    except (TypeError, ValueError):
        raise RecordError(f"DICOM header value {name} is not an integer: {Path(str(ds.filename)).name}")


def _transfer_syntax(ds):
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _check_native_length(ds, name: str) -> None:
    """Uncompressed pixel data shorter than Rows x Columns x samples x frames says exactly how much is missing."""
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    bits, samples = _int_tag(ds, "BitsAllocated", 0), _int_tag(ds, "SamplesPerPixel", 1)
    frames = _int_tag(ds, "NumberOfFrames", 1)
    if samples == 3 and str(getattr(ds, "PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: two values per pixel on average
    expected = (rows * cols * samples * frames * bits + 7) // 8
    actual = len(ds.PixelData)
    if bits and expected and actual < expected:
        raise RecordError(f"truncated DICOM pixel data: {actual} of {expected} bytes in {name}")


def plane_orientation(ds) -> list[float] | None:
    """ImageOrientationPatient (six direction cosines, LPS) of a single-frame image, or of a multi-frame one's
    frames (shared functional groups, else the first frame's); None when the file has none."""
    orient = None
    if getattr(ds, "ImageOrientationPatient", None) is not None:
        orient = [float(v) for v in ds.ImageOrientationPatient]
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None) or []
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    for groups in ([shared[0]] if shared else []) + ([per_frame[0]] if per_frame else []):
        po = getattr(groups, "PlaneOrientationSequence", None)
        if po and getattr(po[0], "ImageOrientationPatient", None) is not None:
            orient = [float(v) for v in po[0].ImageOrientationPatient]
    return orient if orient and len(orient) == 6 else None


def _frame_positions(ds, n_frames: int) -> list[float] | None:
    """Where each frame lies along the stack axis, if the frames are slices of a volume: the per-frame
    ImagePositionPatient projected on the slice normal (enhanced CT/MR/PET), or RT Dose's GridFrameOffsetVector."""
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame is not None and len(per_frame) == n_frames:
        orient = plane_orientation(ds)
        normal = np.cross(orient[:3], orient[3:]) if orient and len(orient) == 6 else np.array([0.0, 0.0, 1.0])
        out = []
        for item in per_frame:
            pp = getattr(item, "PlanePositionSequence", None)
            ipp = getattr(pp[0], "ImagePositionPatient", None) if pp else None
            if ipp is None or len(ipp) != 3:
                return None
            out.append(float(np.dot(normal, [float(v) for v in ipp])))
        return out
    offsets = getattr(ds, "GridFrameOffsetVector", None)
    if offsets is not None and len(offsets) == n_frames:
        return [float(v) for v in offsets]
    return None


def _is_volume(ds, n_frames: int) -> bool:
    positions = _frame_positions(ds, n_frames)
    if positions is not None:
        return len(set(positions)) == n_frames
    return str(getattr(ds, "SOPClassUID", "")) in VOLUME_SOP_CLASSES


def charge_dicom(ds, name: str) -> None:
    """Rows x Columns x frames x samples x bits, as the header declares them, against the record limit: before
    pixel_array allocates (a compressed frame can claim any size)."""
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    bits, samples = _int_tag(ds, "BitsAllocated", 8), _int_tag(ds, "SamplesPerPixel", 1)
    frames = _int_tag(ds, "NumberOfFrames", 1)
    # pixel_array holds at least one byte per sample; the modality LUT then makes float32 values
    nbytes = rows * cols * frames * samples * max(1, (bits + 7) // 8)
    charge(nbytes, f"{name}: {rows}x{cols}, {frames} frame(s) of {samples} sample(s) at {bits} bits")


def _read_dataset(path: Path, root: Path | None, header_only: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open_confined(root or path.parent, path) as f:
            return pydicom.dcmread(f, stop_before_pixels=header_only)
    except RecordError:
        raise
    except FileNotFoundError:
        raise RecordError(f"file referenced but missing: {path.name}")
    except InvalidDicomError:
        raise RecordError(f"not a valid DICOM file (no 'DICM' prefix and no file meta header): {path.name}")
    except Exception as e:  # a truncated header makes pydicom raise struct/EOF/value errors of several kinds
        raise RecordError(f"not a valid DICOM file {path.name} (corrupt or truncated header): "
                          f"{type(e).__name__}: {one_line_cause(e)}")


def check_dicom_pixels(ds, name: str, volume: bool) -> None:
    """The pixel limit from the header: Rows x Columns x NumberOfFrames of a 2-D image (pixel_array decodes
    every frame), Rows x Columns of one slice of a multi-frame volume (its total is the record limit's)."""
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    frames = 1 if volume else _int_tag(ds, "NumberOfFrames", 1)
    check_pixels(rows * cols * frames, f"{name}: {rows}x{cols}" + (f" x {frames} frames" if frames > 1 else "")
                 + (" per slice" if volume else ""))


def _decode(path: Path, root: Path | None = None, volume: bool = False):
    """(dataset, decoded array) or a RecordError whose reason says why: not DICOM, no pixel data, no transfer
    syntax, truncated (N of M bytes), too large for the pixel or record limit, or the decoder's own cause
    (missing plugin, broken stream, ...). The header is read first without the pixel data (stop_before_pixels):
    the pixel limit and the record limit are checked before the pixel data is read or decoded. The file is
    opened confined to `root` (default: its own folder)."""
    name = _rel_name(path, root)
    header = _read_dataset(path, root, header_only=True)
    if "Rows" in header:
        charge_dicom(header, path.name)
    check_dicom_pixels(header, name, volume)
    ds = _read_dataset(path, root, header_only=False)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        # pydicom stops quietly at a file cut inside the header: say that it may be truncated
        raise RecordError(f"DICOM without pixel data (not an image, or truncated): {path.name}")
    ts = _transfer_syntax(ds)
    if ts is None:
        raise RecordError(f"DICOM without a transfer syntax (file meta has no (0002,0010)): {path.name}")
    if "Rows" not in header:  # pydicom stopped early in a broken header: charge what the full read found
        charge_dicom(ds, path.name)
    if str(ts) in NATIVE_SYNTAXES and "PixelData" in ds:
        _check_native_length(ds, path.name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array  # YBR_FULL / YBR_FULL_422 arrive converted to RGB (pydicom's as_rgb default)
    except Exception as e:  # pydicom raises several types for unsupported or broken pixel data
        raise RecordError(f"cannot decode DICOM pixel data of {path.name} (transfer syntax "
                          f"{getattr(ts, 'name', str(ts))}): {one_line_cause(e)}")
    return ds, raw


def _mask_bits(raw: np.ndarray, bits: int) -> np.ndarray:
    if raw.dtype.kind == "u" and 0 < bits < raw.dtype.itemsize * 8 and raw.max(initial=0) >> bits:
        # bits above BitsStored (overlays, garbage) are not part of the value; pydicom 3 already masks them,
        # this keeps the rule explicit whatever the decoder did
        raw = raw & np.asarray((1 << bits) - 1, dtype=raw.dtype)
    return raw


def _spacing(ds) -> tuple[float, float] | None:
    ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    if ps is None:
        shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
        pm = getattr(shared[0], "PixelMeasuresSequence", None) if shared else None
        ps = getattr(pm[0], "PixelSpacing", None) if pm else None
    return (float(ps[0]), float(ps[1])) if ps is not None and len(ps) == 2 else None


def _pick_frame(ds, raw: np.ndarray, name: str, multi_frame: int | str) -> tuple[np.ndarray, dict]:
    """One 2-D frame of a multi-frame file by the catalog's rule; volumes are not 2-D images."""
    n = _int_tag(ds, "NumberOfFrames", 1)
    if n <= 1:
        return raw, {}
    kind = VOLUME_SOP_CLASSES.get(str(getattr(ds, "SOPClassUID", "")), "multi-frame")
    if _is_volume(ds, n):
        raise RecordError(f"multi-frame DICOM is a volume ({kind}, {n} slices), not a 2-D image; "
                          f"volume datasets read it slice by slice: {name}")
    if multi_frame == "reject":
        raise RecordError(f"multi-frame DICOM ({n} frames) and the catalog's multi_frame rule is reject: {name}")
    if not 0 <= int(multi_frame) < n:
        raise RecordError(f"multi-frame DICOM has {n} frames; the catalog names frame {multi_frame}: {name}")
    return raw[int(multi_frame)], {"frame": int(multi_frame), "frames": n}


def read_dicom(path: Path, *, ct: bool = False, multi_frame: int | str = 0, root: Path | None = None) -> Pixels:
    """A DICOM image: modality LUT (slope/intercept), then either HU for CT (window chosen later)
    or the header's VOI window / VOI LUT for X-ray, with MONOCHROME1 inverted. Colour: RGB as stored, YBR
    converted to RGB, PALETTE COLOR through its palette. A 2-D multi-frame file gives the frame the catalog
    names (`multi_frame`, default 0, "reject" refuses them); a multi-frame volume (enhanced CT/MR, RT dose) is
    rejected here and read by `read_dicom_volume`."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    ds, raw = _decode(path, root)
    raw, frame_attrs = _pick_frame(ds, raw, path.name, multi_frame)
    if raw.ndim not in (2, 3):
        raise RecordError(f"DICOM pixel array of shape {raw.shape} is not one 2-D image: {path.name}")
    bits = _int_tag(ds, "BitsStored", 0)
    raw = _mask_bits(raw, bits)
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    if raw.shape[:2] != (rows, cols) or min(rows, cols) < 1:
        raise RecordError(f"DICOM pixel array {raw.shape} does not match Rows x Columns {rows}x{cols}: {path.name}")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    attrs = {"photometric": photometric, "bits_stored": bits, "dicom_modality": str(getattr(ds, "Modality", "")),
             **frame_attrs}
    spacing = _spacing(ds)
    patient = str(ds.PatientID) if getattr(ds, "PatientID", None) else None
    if photometric == "PALETTE COLOR" and raw.ndim == 2:
        try:
            raw = apply_color_lut(raw, ds)
        except Exception as e:  # a missing or malformed palette
            raise RecordError(f"PALETTE COLOR DICOM with an unusable palette: {path.name}: {one_line_cause(e)}")
        bits = 8 * raw.dtype.itemsize  # palette entries are 8- or 16-bit
    if raw.ndim == 3:  # colour (RGB, or YBR / palette already converted to RGB): display-ready after scaling
        if raw.shape[2] != 3:
            raise RecordError(f"colour DICOM with {raw.shape[2]} samples per pixel: {path.name}")
        if raw.dtype == np.uint8:
            return Pixels(raw, "uint8", spacing_mm=spacing, patient=patient, attributes=attrs)
        top = float((1 << bits) - 1) if bits else float(raw.max(initial=1))
        return Pixels(raw.astype(np.float32), "window", window=(0.0, top), window_name="bits_stored",
                      spacing_mm=spacing, patient=patient, attributes=attrs)
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
        window = _header_window(ds)
        name = "dicom_voi" if window else None
    if window is None:
        # no usable VOI in the header: the full range of the values, as the standard and viewers display it
        lo, hi = float(values.min()), float(values.max())
        window, name = (lo, hi if hi > lo else lo + 1.0), name or "min_max"  # a constant image: normalise rejects it
    if photometric == "MONOCHROME1":
        # invert so that dense structures are bright; keep the window where it was: v -> lo+hi-v
        values = (window[0] + window[1]) - values
        attrs["inverted"] = True
    return Pixels(values, "window", window=window, window_name=name, spacing_mm=spacing, patient=patient,
                  attributes=attrs)


def _header_window(ds) -> tuple[float, float] | None:
    """The first (primary) header window as the (low, high) of a linear ramp. PS3.3 C.11.2.1.2: LINEAR maps
    c - 0.5 - (w-1)/2 to black and c - 0.5 + (w-1)/2 to white, i.e. (c - w/2, c + w/2 - 1); LINEAR_EXACT maps
    c -/+ w/2. SIGMOID is approximated by its linear ramp."""
    import pydicom

    c, w = ds.WindowCenter, ds.WindowWidth
    try:
        c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
        w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
    except (TypeError, ValueError, IndexError):
        return None  # unusable header window: the full range instead
    if not (w > 1 and np.isfinite(c) and np.isfinite(w)):
        return None
    if str(getattr(ds, "VOILUTFunction", "LINEAR")).upper() == "LINEAR_EXACT":
        return c - w / 2.0, c + w / 2.0
    return c - w / 2.0, c + w / 2.0 - 1.0


@dataclass
class DicomVolume:
    values: np.ndarray  # (Z, Y, X) after the modality LUT, frames sorted by position
    positions: list[float]  # each slice's position along the stack axis (mm)
    spacing_mm: tuple[float, float] | None
    sop_uid: str


def read_dicom_volume(path: Path, root: Path | None = None) -> DicomVolume:
    """The frames of a multi-frame volume (enhanced CT/MR/PET, RT dose) as slices sorted by their position:
    the volume path's reader for one file holding a whole series."""
    from pydicom.pixels import apply_modality_lut

    ds, raw = _decode(path, root, volume=True)
    n = _int_tag(ds, "NumberOfFrames", 1)
    if n <= 1 or raw.ndim != 3 or str(getattr(ds, "PhotometricInterpretation", "")).startswith(("RGB", "YBR", "PAL")):
        raise RecordError(f"not a grey multi-frame volume (shape {raw.shape}): {path.name}")
    positions = _frame_positions(ds, n)
    if positions is None or len(set(positions)) != n:
        raise RecordError(f"multi-frame DICOM without a distinct position per frame; not a volume: {path.name}")
    raw = _mask_bits(raw, _int_tag(ds, "BitsStored", 0))
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    order = np.argsort(positions, kind="stable")
    return DicomVolume(values[order], [positions[i] for i in order], _spacing(ds),
                       str(getattr(ds, "SOPInstanceUID", "")))


def read_2d(path: Path, *, ct: bool = False, mode: str | None = None, multi_frame: int | str = 0,
            root: Path | None = None) -> Pixels:
    """Any 2-D image file: DICOM by suffix, everything else through PIL (8-bit as uint8, 16-bit percentile).
    Adapters pass their dataset `root`: the file is opened confined to it (corpus.paths.open_confined)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path, ct=ct, multi_frame=multi_frame, root=root)
    arr = read_pil(path, mode=mode, root=root)
    if arr.dtype == np.uint8:
        return Pixels(arr, "uint8")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise RecordError(f"image contains NaN or infinite values: {path.name}")
    return Pixels(arr, "percentile")
