"""`--scale real`: the sample datasets at the real releases' per-image size, dtype, bit depth and format.

Each miniature writer of this package writes its dataset (layout, quirks, annotation files, truth); then every
image and volume file of it is rewritten here at the catalog's `real_size` (corpus.catalog.RealSize): a 2-D image
grows to `height` x `width` rows and columns, a volume to the `volume` shape (axis by axis, in the file's own order),
a DICOM X-ray to the catalog's BitsStored. The miniature's pixels stay at the top-left (the origin of every
annotation format here), so every annotation coordinate and every truth box stays valid: nothing of the
annotation files is rewritten. What is added around them:

  * an image (photograph, CT, MR, X-ray): the image mirrored (numpy `symmetric` padding), so the added pixels have
    the texture, intensity range and compressibility of the image itself;
  * a label map (a mask, a segmentation volume): the map's own background value (its last pixel), so no object
    is added.

A file is a label map when its 8 most common values cover >= 90% of its pixels, or when it is an 8-bit image whose
pixels are >= 97% within 24 of 0 or 255 (a JPEG-compressed 0/255 mask). The record count stays the miniature
writer's (a handful per dataset): the per-record cost, not the count, is what the real size changes.

Every file is replaced atomically (written next to itself, then renamed); `write_real_samples` writes each dataset
into a hidden folder and renames it into place once complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from medlvr.corpus.catalog import CatalogError, DatasetSpec, RealSize

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff",
                  ".dcm": "dicom", ".dicom": "dicom", ".nii": "nifti", ".gz": "nifti_gz", ".h5": "hdf5",
                  ".mhd": "mhd"}
HDF5_IMAGE_KEYS = ("reconstruction_rss", "reconstruction_esc")  # the fastMRI datasets the reader decodes


def is_label_map(arr: np.ndarray) -> bool:
    """A mask or label volume (module docstring), judged on its values."""
    flat = arr.reshape(-1) if arr.ndim < 3 or arr.shape[-1] not in (3, 4) else arr[..., 0].reshape(-1)
    if flat.size == 0:
        return True
    if not np.issubdtype(flat.dtype, np.integer):
        return False
    _, counts = np.unique(flat[:: max(1, flat.size // 200_000)], return_counts=True)
    if np.sort(counts)[-8:].sum() >= 0.9 * counts.sum():
        return True
    if flat.dtype == np.uint8:
        return bool(((flat <= 24) | (flat >= 231)).mean() >= 0.97)
    return False


def grow(arr: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    """`arr` padded at the high end of its leading axes up to `target` (never cut): mirrored for an image, its
    background value for a label map. Trailing axes beyond `target` (channels, frames) are kept as they are."""
    pads = [(0, max(0, t - n)) for n, t in zip(arr.shape, target)] + [(0, 0)] * (arr.ndim - len(target))
    if not any(p[1] for p in pads):
        return arr
    if is_label_map(arr):
        background = arr[tuple(-1 for _ in range(len(target)))]
        if np.ndim(background):  # an RGB label map: pad each channel with its own background
            return np.stack([np.pad(arr[..., c], pads[:-1], constant_values=background[c])
                             for c in range(arr.shape[-1])], axis=-1)
        return np.pad(arr, pads, constant_values=background)
    big = np.pad(arr, pads, mode="symmetric")
    return _jitter_outside(big, arr.shape[:len(target)])


def _jitter_outside(big: np.ndarray, inner: tuple[int, ...]) -> np.ndarray:
    """+-2 (integer images; 1% of the spread for floats) on the mirrored pixels, so that a compressor finds no
    long exact repeats in them and the file compresses like a real image, not like a tiled one."""
    rng = np.random.default_rng(0)
    outside = np.ones(big.shape[:len(inner)], dtype=bool)
    outside[tuple(slice(0, n) for n in inner)] = False
    noise_shape = big.shape
    if np.issubdtype(big.dtype, np.integer):
        noise = rng.integers(-2, 3, size=noise_shape, dtype=np.int8)
        info = np.iinfo(big.dtype)
        wide = big.astype(np.int32) + noise * outside.reshape(outside.shape + (1,) * (big.ndim - outside.ndim))
        return np.clip(wide, info.min, info.max).astype(big.dtype)
    spread = float(np.std(big[tuple(slice(0, n) for n in inner)])) or 1.0
    noise = (rng.standard_normal(noise_shape, dtype=np.float32) * 0.01 * spread).astype(big.dtype)
    return big + noise * outside.reshape(outside.shape + (1,) * (big.ndim - outside.ndim))


def _replace(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plane(real: RealSize) -> tuple[int, int]:
    return (real.height, real.width) if real.height else tuple(real.volume[-2:])


def _pil(path: Path, real: RealSize) -> None:
    from PIL import Image

    with Image.open(path) as im:
        fmt, mode = im.format, im.mode
        arr = np.asarray(im)
    big = grow(arr, _plane(real))
    kw = {"quality": real.jpeg_quality or 90} if fmt == "JPEG" else {}
    _replace(path, lambda tmp: Image.fromarray(np.ascontiguousarray(big), mode=mode if mode in ("RGBA", "L", "RGB")
                                               else None).save(tmp, format=fmt, **kw))


def _dicom(path: Path, real: RealSize) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    bits = int(ds.BitsStored)
    if real.bits_stored < bits and ds.get("WindowCenter") is None:  # e.g. a 14-bit X-ray as the release's 12
        arr = (arr >> (bits - real.bits_stored)).astype(arr.dtype)
        ds.BitsStored, ds.HighBit = real.bits_stored, real.bits_stored - 1
    big = np.ascontiguousarray(grow(arr, _plane(real)))
    ds.Rows, ds.Columns = big.shape[:2]
    ds.PixelData = big.tobytes()
    _replace(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def _nifti(path: Path, real: RealSize) -> None:
    import nibabel as nib

    img = nib.load(path)
    arr = np.asanyarray(img.dataobj)
    big = grow(arr, real.volume or (real.height, real.width))
    out = nib.Nifti1Image(big, img.affine, img.header)
    out.set_data_dtype(img.get_data_dtype())
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    _replace(path, lambda tmp: nib.save(out, tmp.with_name(tmp.name + suffix)) or
             os.replace(tmp.with_name(tmp.name + suffix), tmp))


def _hdf5(path: Path, real: RealSize) -> None:
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            dst.attrs.update(dict(src.attrs))
            for key, dset in src.items():
                data = dset[()]
                if key in HDF5_IMAGE_KEYS:
                    data = grow(data, real.volume)
                dst.create_dataset(key, data=data, track_times=False)
                dst[key].attrs.update(dict(dset.attrs))

    _replace(path, write)


def _mhd(path: Path, real: RealSize) -> None:
    from medlvr.corpus.mhd import parse_header
    from medlvr.corpus.sample_data.volumes import write_mhd

    hdr = parse_header(path.parent, path.name)
    if hdr.compressed or hdr.offset:
        raise CatalogError(f"{path.name}: only a plain header + raw MetaImage is grown by --scale real")
    etype = {"u1": "MET_UCHAR", "u2": "MET_USHORT", "i2": "MET_SHORT", "f4": "MET_FLOAT"}[hdr.dtype.newbyteorder("=").str[1:]]
    raw = path.parent / hdr.data_rel
    arr = np.fromfile(raw, dtype=hdr.dtype).reshape(tuple(hdr.dims[::-1]))
    big = grow(arr, real.volume)
    spacing = hdr.spacing
    tmp_dir = path.parent / f".{path.stem}.grow"
    tmp_dir.mkdir(exist_ok=True)
    try:
        write_mhd(tmp_dir / path.name, big, spacing, etype, data_name=raw.name)
        os.replace(tmp_dir / raw.name, raw)
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


GROWERS = {"png": _pil, "jpeg": _pil, "bmp": _pil, "tiff": _pil, "dicom": _dicom, "nifti": _nifti,
           "nifti_gz": _nifti, "hdf5": _hdf5, "mhd": _mhd}


def file_kind(path: Path) -> str | None:
    if path.name.startswith("._"):  # AppleDouble twins (MSD) are not images
        return None
    kind = IMAGE_SUFFIXES.get(path.suffix.lower())
    if kind == "nifti_gz" and not path.name.lower().endswith(".nii.gz"):
        return None
    return kind


def _deeplesion_sizes(root: Path, real: RealSize) -> None:
    """DL_info.csv states each key slice's Image_size ("rows, columns"), which the adapter checks against the PNG."""
    import csv
    import io

    path = root / "DL_info.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for row in rows:
        row["Image_size"] = f"{real.height}, {real.width}"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _replace(path, lambda tmp: tmp.write_text(buf.getvalue()))


# annotation files that state the image size (checked by their adapter): rewritten with the real size
SIZE_STATEMENTS = {"deeplesion": _deeplesion_sizes}


def grow_dataset(root: Path, spec: DatasetSpec) -> int:
    """Every image and volume file under `root` rewritten at `spec.real_size`; returns the number of files."""
    real = spec.real_size
    if real is None:
        raise CatalogError(f"{spec.id}: the catalog entry has no real_size, so --scale real cannot write it")
    n = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        kind = file_kind(path)
        if kind is None:
            continue
        GROWERS[kind](path, real)
        n += 1
    if spec.id in SIZE_STATEMENTS:
        SIZE_STATEMENTS[spec.id](root, real)
    return n
