"""`--scale real`: the sample datasets at the real releases' per-image size, dtype, bit depth and format.

Each miniature writer of this package writes its dataset (layout, quirks, annotation files, truth); then every
image and volume file of it is rewritten here at the catalog's `real_size` (corpus.catalog.RealSize): a 2-D image
grows to `height` x `width` rows and columns, a volume to the `volume` shape (axis by axis, in the file's own order),
a DICOM X-ray to the catalog's BitsStored.

  * Where the annotations are mask images (the paired-mask datasets) or label volumes, the image plane is first
    zoomed by the largest integer factor that fits (pixel repetition, so a box scales exactly and the truth boxes
    are multiplied by it): the objects keep their share of the image, as in the real releases.
  * Where the annotations are coordinates in a table, XML or JSON, the miniature is not zoomed: its pixels stay at
    the top-left, the origin of every annotation format here, so the coordinates and truth boxes stay valid (the
    objects are then small for the real image size). Annotation files that state the image size or whose
    encoding depends on it (DeepLesion's Image_size, BCCD's VOC <size>, LIVECell's COCO sizes and RLE, SIIM's
    column-major RLE) are rewritten for the real size (SIZE_STATEMENTS).
  * Around the miniature, an image (photograph, CT, MR, X-ray) is mirrored (numpy `symmetric` padding, with +-2 of
    jitter so that it compresses like an image, not like a tiled copy); a label map (a mask, a segmentation volume)
    gets its own background value (its last pixel), so no object is added.

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


def zoom_factor(shape: tuple[int, ...], target: tuple[int, ...]) -> int:
    """The integer zoom that brings a 2-D miniature closest to `target` without passing it (at least 1)."""
    return max(1, min(t // n for n, t in zip(shape, target)))


def grow(arr: np.ndarray, target: tuple[int, ...], zoom: int = 1) -> np.ndarray:
    """`arr` zoomed `zoom` times (pixel repetition: a box scales exactly by `zoom`) on its first two axes, then
    padded at the high end of its leading axes up to `target` (never cut): mirrored for an image, its background
    value for a label map. Trailing axes beyond `target` (channels, frames) are kept as they are."""
    if zoom > 1:
        label = is_label_map(arr)
        arr = np.repeat(np.repeat(arr, zoom, axis=0), zoom, axis=1)
        if not label:  # repeated pixels compress far better than an image: jitter them all
            arr = _jitter_outside(arr, (0,) * 2)
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
    core = big[tuple(slice(0, n) for n in inner)] if all(inner) else big  # inner (0, ...): jitter everything
    spread = float(np.std(core)) or 1.0
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


def _pil(path: Path, real: RealSize, zoom_masks: bool = False) -> int:
    """A 2-D image file at the real size; returns its zoom (1 unless `zoom_masks`: the dataset's annotations are
    mask images, which are zoomed with their images, so the objects keep their share of the image)."""
    from PIL import Image

    with Image.open(path) as im:
        fmt, mode = im.format, im.mode
        arr = np.asarray(im)
    zoom = zoom_factor(arr.shape[:2], _plane(real)) if zoom_masks else 1
    big = grow(arr, _plane(real), zoom)
    kw = {"quality": real.jpeg_quality or 90} if fmt == "JPEG" else {}
    _replace(path, lambda tmp: Image.fromarray(np.ascontiguousarray(big), mode=mode if mode in ("RGBA", "L", "RGB")
                                               else None).save(tmp, format=fmt, **kw))
    return zoom


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


def grow_volume(arr: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    """A volume at `target`: its image plane (the two axes of largest target) zoomed like a 2-D mask image, so a
    lesion keeps its share of the slice, then every axis padded (grow)."""
    plane = sorted(sorted(range(len(target)), key=lambda i: -target[i])[:2])
    zoom = zoom_factor(tuple(arr.shape[i] for i in plane), tuple(target[i] for i in plane))
    if zoom > 1:
        label = is_label_map(arr)
        for i in plane:
            arr = np.repeat(arr, zoom, axis=i)
        if not label:
            arr = _jitter_outside(arr, (0,) * len(target))
    return grow(arr, target)


def _nifti(path: Path, real: RealSize) -> None:
    import nibabel as nib

    img = nib.load(path)
    arr = np.asanyarray(img.dataobj)
    big = grow_volume(arr, real.volume or (real.height, real.width))
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
    big = grow_volume(arr, real.volume)
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


def _deeplesion_sizes(root: Path, real: RealSize, before: dict[str, tuple[int, ...]]) -> None:
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


def _bccd_sizes(root: Path, real: RealSize, before: dict[str, tuple[int, ...]]) -> None:
    """The VOC XML's <size> states the image's width and height."""
    import re

    for xml in sorted((root / "BCCD" / "Annotations").glob("*.xml")):
        text = re.sub(r"<width>\d+</width>", f"<width>{real.width}</width>", xml.read_text())
        text = re.sub(r"<height>\d+</height>", f"<height>{real.height}</height>", text)
        _replace(xml, lambda tmp: tmp.write_text(text))


def _padded_mask(mask: np.ndarray, real: RealSize) -> np.ndarray:
    out = np.zeros((real.height, real.width), dtype=bool)
    out[:mask.shape[0], :mask.shape[1]] = mask
    return out


def _siim_rle(root: Path, real: RealSize, before: dict[str, tuple[int, ...]]) -> None:
    """train-rle.csv: relative RLE runs over the column-major flat image, so they depend on the image height:
    decoded at the miniature's size, encoded again at the real one."""
    from medlvr.corpus.adapters.rle import decode_relative, encode_relative

    shapes = {Path(rel).stem: shape for rel, shape in before.items()}
    path = root / "train-rle.csv"
    lines = path.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        sop, rle = line.split(",", 1)
        if rle.strip() != "-1":
            h, w = shapes[sop][:2]
            rle = " " + encode_relative(_padded_mask(decode_relative(rle.strip(), h, w), real))
        out.append(f"{sop},{rle}")
    _replace(path, lambda tmp: tmp.write_text("\n".join(out) + "\n"))


def _livecell_coco(root: Path, real: RealSize, before: dict[str, tuple[int, ...]]) -> None:
    """The COCO files state each image's width and height, and an uncompressed RLE its size and column-major runs."""
    import json

    from medlvr.corpus.sample_data.boxes import _coco_counts

    for path in sorted(root.glob("livecell_coco_*.json")):
        doc = json.loads(path.read_text())
        for im in doc["images"]:
            im["width"], im["height"] = real.width, real.height
        for ann in doc["annotations"].values():
            seg = ann["segmentation"]
            if isinstance(seg, dict):
                h, w = seg["size"]
                flat = np.repeat(np.arange(len(seg["counts"])) % 2 == 1, seg["counts"])
                mask = flat.reshape(w, h).T
                seg["size"], seg["counts"] = [real.height, real.width], _coco_counts(_padded_mask(mask, real))
        text = json.dumps(doc)
        _replace(path, lambda tmp: tmp.write_text(text))


# annotation files that state the image size or depend on it (checked by their adapter): rewritten for the real size
SIZE_STATEMENTS = {"deeplesion": _deeplesion_sizes, "bccd": _bccd_sizes, "siim_acr": _siim_rle,
                   "livecell": _livecell_coco}


def _shape(path: Path, kind: str) -> tuple[int, ...]:
    """The 2-D size (rows, columns) of an image file before it grows (what size-dependent annotations were made for)."""
    if kind == "dicom":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return (int(ds.Rows), int(ds.Columns))
    if GROWERS[kind] is _pil:
        from PIL import Image

        with Image.open(path) as im:
            return (im.height, im.width)
    return ()


# adapters whose every annotation is a mask image: their 2-D files are zoomed as well as padded
MASK_ADAPTERS = ("paired_masks",)


def grow_dataset(root: Path, spec: DatasetSpec) -> dict[str, int]:
    """Every image and volume file under `root` rewritten at `spec.real_size`; returns {relative path: zoom}."""
    real = spec.real_size
    if real is None:
        raise CatalogError(f"{spec.id}: the catalog entry has no real_size, so --scale real cannot write it")
    zooms: dict[str, int] = {}
    before: dict[str, tuple[int, ...]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        kind = file_kind(path)
        if kind is None:
            continue
        before[path.relative_to(root).as_posix()] = _shape(path, kind)
        if GROWERS[kind] is _pil:
            zooms[path.relative_to(root).as_posix()] = _pil(path, real, spec.adapter in MASK_ADAPTERS)
        else:
            GROWERS[kind](path, real)
            zooms[path.relative_to(root).as_posix()] = 1
    if spec.id in SIZE_STATEMENTS:
        SIZE_STATEMENTS[spec.id](root, real, before)
    return zooms


def zoom_truth(truth: list[dict], zooms: dict[str, int]) -> list[dict]:
    """The miniature's truth boxes in the grown files' pixels (times the file's zoom; padding moves nothing)."""
    return [{**t, "boxes": [[lb, [v * zooms.get(t["source_path"], 1) for v in b]] for lb, b in t["boxes"]]}
            for t in truth]
