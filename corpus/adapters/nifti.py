"""A1 `nifti_volume`: NIfTI image + label-map volumes (KiTS, LiTS, MSD, BraTS, ACDC, CAMUS 2023).

One record = one anchor image file found by `anchor_glob` (or listed in an MSD `dataset.json`). Every other
file of the record is named by a template filled from the anchor: `{anchor}` (its path), `{dir}`, `{name}`,
`{stem}` and the named groups of `anchor_regex`. Catalog options (all per dataset, or per entry of `variants`
when a dataset ships in several releases whose file names differ; the first variant whose anchor matches wins):

  anchor_glob / anchor_regex   the record's anchor file and named groups taken from its path
  channels: {name: template}   one file per sequence (BraTS); else the anchor itself is the image
  channel_names: [..]          names of the channels of a 4-D image (last axis "C" in axis_order)
  channel: name                keep only this channel of a 4-D (XYZC) image
  volume_index: int            4-D rule: a 4-D array read with a 3-D axis_order keeps this volume of its last
                               axis (ACDC 4-D cine frame, fMRI time point; negative counts from the end); without
                               it such a file is rejected with a reason naming this option
  label: template              the label map; missing file -> reject (null: unlabelled dataset)
  sidecar: template            key-value cfg (ACDC Info.cfg, CAMUS Info_2CH.cfg), A14 attributes
  phase_from_sidecar: {group, keys}   the anchor's frame number must equal one of the sidecar keys (ED/ES)
  group_attributes: [..]       regex groups copied into the image attributes (view, phase, vendor)
  dataset_json: glob           MSD: records from each task's `training` list, label names from `labels`
  tasks: [..]                  only these task folders (MSD CT tasks as one dataset)
  json_labels: {qualify, organs, parents}   how dataset.json labels become rules (see _json_rules)
  channels_from_json: bool     4-D channel names from dataset.json `modality` (MSD Prostate: T2, ADC)
  strict_labels: bool          (default true) a label value no rule names rejects the record (wrong release)
  label_rules: [..]            hierarchy rules (corpus.masks.rules_from_options) for glob datasets
  axis_order: "XYZ" | "ZYX" | "XYZC" | "XY" ...  the on-disk array axes; never guessed from the shape. For a
                               3-D NIfTI the affine names the spatial axes (display_orientation); axis_order
                               then only places the channels and marks 2-D files
  orientation: display | as_stored   (default display) the one display convention, docs/datasets.md; for
                               MetaImage from TransformMatrix / AnatomicalOrientation (none: as read)
  canonical: bool              reorient to RAS with nib.as_closest_canonical first (then axis_order XYZ)
  intensity: ct_hu | percentile | uint8 | auto (uint8 arrays -> uint8, else percentile)
  reader: nifti | metaimage    the file format of the images and labels
  slices: SliceConfig fields   slice-selection overrides

NaN voxels of an image become background (its lowest finite value) and their number is kept in the image
attribute `nan_voxels`; a label map with NaN is still rejected. Reasons never carry an absolute path.
"""

from __future__ import annotations

from dataclasses import dataclass

import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.limits import charge
from medlvr.corpus.paths import confined, rel_path, require_file, safe_path, walk
from medlvr.corpus.adapters.sidecar import read_json, read_kv, whitelist
from medlvr.corpus.masks import LabelRule
from medlvr.corpus.mhd import check_mhd, directions_ras, read_mhd
from medlvr.corpus.orientation import display_axes
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage
from medlvr.corpus.scaled_volume import ScaledVolume
from medlvr.corpus.volumes import SliceConfig, volume_images

_EXT = re.compile(r"(\.nii\.gz|\.nii|\.mhd|\.mha)$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- readers
def _one_line(e: BaseException, root: Path) -> str:
    """An exception as one line of text with every path inside `root` made relative (nibabel's messages carry
    the absolute path of the file it tried) and any other absolute path cut to its file name."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    text = text.replace(str(root.resolve()) + "/", "").replace(str(root) + "/", "")
    return re.sub(r"(?<![\w.])/(?:[^/\s'\"]+/)+([^/\s'\"]+)", r"\1", text)


def _load_confined(root: Path, rel: str):
    """nibabel.load, with every file of the image (a NIfTI pair's .img too) approved by corpus.paths.confined and
    opened by its resolved path: nibabel's own sniffing of the type, then its file map with confined names."""
    from nibabel.filebasedimages import ImageFileError
    from nibabel.imageclasses import all_image_classes

    real = confined(root, rel)
    if real.stat().st_size == 0:
        raise RecordError(f"cannot read NIfTI {rel}: empty file")
    sniff = None
    for klass in all_image_classes:
        is_image, sniff = klass.path_maybe_image(str(real), sniff)
        if is_image:
            break
    else:
        raise ImageFileError(f"cannot work out the file type of {Path(rel).name}")
    file_map = klass.filespec_to_file_map(str(safe_path(root, rel)))
    for role, holder in file_map.items():
        try:
            holder.filename = str(confined(root, Path(holder.filename)))
        except RecordError as e:
            if "missing" not in e.reason:
                raise
            if role not in ("image", "header"):
                continue  # an optional part that is absent (SPM's .mat beside an Analyze pair)
            name = Path(holder.filename).relative_to(root).as_posix()
            raise RecordError(f"cannot read NIfTI {rel}: its data file {name} is missing") from None
    return klass.from_file_map(file_map)


def read_nifti(root: Path, rel: str, canonical: bool = False, lazy_scaling: bool = False
               ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Array in on-disk axis order and the header zooms in the same order. Reads whatever nibabel reads as a
    voxel image (NIfTI-1/2, Analyze and NIfTI pairs, MGH/MGZ); anything else is a one-line RecordError. The
    header's shape x element size is charged against the record limit before the data is read. An uncompressed
    file stays memory-mapped (nibabel's array proxy); with `lazy_scaling` a scaled integer file (scl_slope /
    scl_inter) comes back as its stored integers in a ScaledVolume, scaled slice by slice when used, instead of
    a whole float64 volume."""
    import nibabel as nib
    from nibabel.arrayproxy import ArrayProxy

    try:
        img = _load_confined(root, rel)
        if not isinstance(img, nib.spatialimages.SpatialImage):
            # CIFTI-2 holds a matrix over brain grayordinates, not voxels: there is no slice to take
            raise RecordError(f"{rel} is a {type(img).__name__} (not a voxel volume): not supported")
        shape, dtype = img.shape, np.dtype(img.get_data_dtype())
        scaled = getattr(img.dataobj, "slope", 1) != 1 or getattr(img.dataobj, "inter", 0) != 0
        charge(int(np.prod(shape, dtype=np.int64)) * (max(dtype.itemsize, 4) if scaled else dtype.itemsize),
               f"{rel}: header shape {'x'.join(map(str, shape))} of {dtype}{' (scaled)' if scaled else ''}")
        if canonical:
            img = nib.as_closest_canonical(img)
        proxy = img.dataobj
        if lazy_scaling and scaled and dtype.kind in "iu" and isinstance(proxy, ArrayProxy):
            arr = ScaledVolume(proxy.get_unscaled(), proxy.slope, proxy.inter)
        else:
            arr = np.asanyarray(proxy)  # keeps int16/uint8 when there is no scaling
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except RecordError:
        raise
    except FileNotFoundError as e:  # an Analyze/NIfTI pair whose .img is gone: name it relative to the root
        missing, base = Path(e.filename or "").resolve(), root.resolve()
        name = missing.relative_to(base).as_posix() if missing.is_relative_to(base) else missing.name
        raise RecordError(f"cannot read NIfTI {rel}: its data file {name} is missing")
    except Exception as e:  # truncated gzip, bad header, short data: nibabel raises many types
        raise RecordError(f"cannot read NIfTI {rel}: {_one_line(e, root)}")
    return arr, zooms


def display_orientation(root: Path, rel: str, order: str, canonical: bool = False) -> tuple[str, tuple[int, ...]]:
    """The display convention of every NIfTI volume (docs/datasets.md, "Orientation"), derived from the affine:
    the array axis that points most along the patient's left-right axis is X, increasing towards the patient's
    LEFT; the one along anterior-posterior is Y, increasing towards POSTERIOR; the third is Z, its slices kept in
    the order they are stored (so a slice suffix is the stored slice index). Radiological display, as the
    laterality rule (§6.4) assumes. Returns the axis order that names the array's axes and the axes to flip.
    A non-spatial `order` (2-D, "XY") is returned as it is."""
    import nibabel as nib

    spatial = [c for c in order if c in "XYZ"]
    if sorted(spatial) != sorted("XYZ") or ("C" in order and order.index("C") < 3):
        return order, ()
    img = _load_confined(root, rel)
    if canonical:
        img = nib.as_closest_canonical(img)
    letters, flips = display_axes(img.affine[:3, :3])  # the affine's columns: the array axes in RAS
    return letters + order[3:], flips


def read_any(root: Path, rel: str, reader: str, canonical: bool, lazy_scaling: bool = False
             ) -> tuple[np.ndarray, tuple[float, ...]]:
    if reader == "nifti":
        return read_nifti(root, rel, canonical, lazy_scaling)
    if reader == "metaimage":
        return read_mhd(root, rel)
    raise RecordError(f"unknown volume reader {reader!r}")


def to_zyx(arr: np.ndarray, zooms: tuple[float, ...], order: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorder an array whose axes are named by `order` (letters X, Y, Z and optionally C) to (Z, Y, X[, C]).

    Trailing singleton axes beyond `order` are dropped (NIfTI pads dims with 1); a 2-D order gets Z = 1.
    """
    order = order.upper()
    if sorted(order) not in (sorted("XYZ"), sorted("XYZC"), sorted("XY"), sorted("XYC")):
        raise RecordError(f"bad axis_order {order!r}")
    zooms = tuple(zooms) + (1.0,) * max(0, arr.ndim - len(zooms))
    while arr.ndim > len(order) and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != len(order):
        raise RecordError(f"expected a {len(order)}-D array with axes {order}, got shape {arr.shape}")
    zooms = zooms[:len(order)]
    if "Z" not in order:
        arr, zooms, order = arr[np.newaxis], (1.0,) + zooms, "Z" + order
    target = "ZYX" + ("C" if "C" in order else "")
    perm = [order.index(c) for c in target]
    z = [zooms[i] for i in perm]
    return np.transpose(arr, perm), (float(z[0]), float(z[1]), float(z[2]))


# ----------------------------------------------------------------------------------------------- options
def variants(spec) -> list[dict[str, Any]]:
    base = {k: v for k, v in spec.options.items() if k != "variants"}
    if "variants" not in spec.options:
        return [dict(base, name=base.get("name", "default"))]
    return [dict(base, **v) for v in spec.options["variants"]]


def _variant_by_name(spec, name: str) -> dict[str, Any]:
    for v in variants(spec):
        if v["name"] == name:
            return v
    raise RecordError(f"unknown release variant {name!r}")


def _pick_variant(spec, root: Path) -> dict[str, Any]:
    tried = []
    for v in variants(spec):
        glob = v.get("dataset_json") or v["anchor_glob"]
        tried.append(glob)
        if next(walk(root, glob), None) is not None:
            return v
    raise RecordError(f"no file matches any of {tried} under the dataset root", stage="discover")


def _reader(spec, var: dict) -> str:
    return var.get("reader") or ("metaimage" if spec.adapter == "metaimage" else "nifti")


def _stem(name: str) -> str:
    return _EXT.sub("", name)


def _json_rules(labels: dict, var: dict, prefix: str) -> list[dict]:
    """MSD dataset.json `labels` -> rule dicts. Raw label = name (or "<Task folder>/<name>" when qualify).

    `organs` get one union region per slice (instances: false); `parents` {child: parent} make the parent's
    region include the child's values (pancreas ⊇ tumour), as the hierarchy rules of §6.1 require.
    """
    jl = var.get("json_labels") or {}
    organs, parents = set(jl.get("organs") or ()), dict(jl.get("parents") or {})
    rules: dict[str, dict] = {}
    for code, name in sorted(labels.items(), key=lambda kv: int(kv[0])):
        if int(code) == 0:
            continue
        raw = f"{prefix}/{name}" if jl.get("qualify") else str(name)
        rules[raw] = {"label": raw, "values": [int(code)], "instances": raw not in organs, "parent": parents.get(raw)}
    for _ in range(len(rules)):  # propagate child values up the hierarchy (a few levels at most)
        for raw, r in rules.items():
            p = r["parent"]
            if p in rules:
                rules[p]["values"] = sorted(set(rules[p]["values"]) | set(r["values"]))
    return list(rules.values())


def _plain_rules(var: dict) -> list[dict]:
    return [{"label": r["label"], "values": [int(v) for v in r["values"]], "instances": bool(r.get("instances", True)),
             "parent": r.get("parent")} for r in var.get("label_rules") or ()]


# ----------------------------------------------------------------------------------------------- discover
def _make_ref(spec, root: Path, var: dict, anchor: str, rules: list[dict], extra: dict | None = None,
              paths: dict | None = None) -> RecordRef:
    pattern = var.get("anchor_regex")
    groups: dict[str, str] = {}
    if pattern:
        m = re.search(pattern, anchor)
        if not m:
            raise RecordError(f"file name does not match the expected pattern {pattern!r}")
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
    pp = PurePosixPath(anchor)
    tv = {"anchor": anchor, "dir": pp.parent.as_posix(), "name": pp.name, "stem": _stem(pp.name), **groups}
    try:
        if paths is None:
            paths = {}
            if var.get("channels"):
                for ch, tpl in var["channels"].items():
                    paths[f"image:{ch}"] = tpl.format(**tv)
            else:
                paths["image"] = var.get("image", "{anchor}").format(**tv)
            if var.get("label"):
                paths["label"] = var["label"].format(**tv)
            if var.get("sidecar"):
                paths["sidecar"] = var["sidecar"].format(**tv)
    except KeyError as e:
        raise RecordError(f"catalog template names an unknown field {e}")
    for rel in paths.values():
        require_file(root, rel)
        if _reader(spec, var) == "metaimage" and rel.lower().endswith((".mhd", ".mha")):

            check_mhd(root, rel)  # header + data-file checks are cheap: reject here, not in a worker
    attrs: dict[str, Any] = {k: groups[k] for k in var.get("group_attributes") or () if k in groups}
    if "sidecar" in paths:
        kv = read_kv(safe_path(root, paths["sidecar"]), root=root)
        ph = var.get("phase_from_sidecar")
        if ph:
            frame = int(groups[ph["group"]])
            hit = [k for k in ph["keys"] if isinstance(kv.get(k), (int, float)) and int(kv[k]) == frame]
            if not hit:
                raise RecordError(f"frame {frame} is none of {ph['keys']} in {paths['sidecar']} "
                                  f"({ {k: kv.get(k) for k in ph['keys']} })")
            attrs["phase"] = hit[0]
        attrs.update(kv)
    attrs.update(extra or {})
    attrs = whitelist(attrs, tuple(spec.attributes) + ("phase", "view", "vendor", "release"))
    patient = groups.get(var["patient_group"]) if var.get("patient_group") else None
    return RecordRef(key=anchor, paths=paths, patient=patient, attributes=attrs,
                     annotations={"variant": var["name"], "rules": rules, "channels": None})


def _discover_glob(spec, root: Path, var: dict) -> Iterator[RecordRef | Reject]:
    rules = _plain_rules(var)
    for p in walk(root, var["anchor_glob"]):
        anchor = rel_path(root, p)
        try:
            yield _make_ref(spec, root, var, anchor, rules)
        except RecordError as e:
            yield Reject(spec.id, anchor, "discover", e.reason, anchor)


def _clean_ref(s: Any) -> str:
    s = str(s).replace("\\", "/")
    return s[2:] if s.startswith("./") else s


def _discover_json(spec, root: Path, var: dict) -> Iterator[RecordRef | Reject]:
    seen: set[str] = set()
    for jp in walk(root, var["dataset_json"]):
        jrel = rel_path(root, jp)
        task_dir = PurePosixPath(jrel).parent
        if var.get("tasks") and task_dir.name not in var["tasks"]:
            continue  # a task the catalog leaves out (MSD Liver duplicates LiTS): not a record of this dataset
        try:
            js = read_json(jp, root)
            labels, training = js["labels"], js["training"]
            if not isinstance(labels, dict) or not isinstance(training, list):
                raise TypeError("labels must be a mapping and training a list")
            rules = _json_rules(labels, var, task_dir.name)
            channels = None
            if var.get("channels_from_json"):
                mod = js["modality"]
                channels = [str(mod[k]) for k in sorted(mod, key=int)]
        except (RecordError, KeyError, TypeError, ValueError) as e:
            yield Reject(spec.id, jrel, "discover", f"unusable dataset.json: {type(e).__name__}: {e}", jrel)
            continue
        for entry in training:
            try:
                img_rel, lab_rel = _clean_ref(entry["image"]), _clean_ref(entry["label"])
            except (KeyError, TypeError):
                yield Reject(spec.id, jrel, "discover", f"training entry without image/label: {entry!r}", jrel)
                continue
            if PurePosixPath(img_rel).name.startswith("."):
                continue  # an AppleDouble `._` twin listed by mistake is not a record
            key = (task_dir / img_rel).as_posix()
            if key in seen:
                yield Reject(spec.id, key, "discover", f"duplicate record id {key} in {jrel}", key)
                continue
            seen.add(key)
            for rel in (img_rel, lab_rel):
                if ".." in PurePosixPath(rel).parts or rel.startswith("/"):
                    yield Reject(spec.id, key, "discover", f"path escapes the task folder: {rel!r}", key)
                    break
            else:
                paths = {"image": key, "label": (task_dir / lab_rel).as_posix()}
                try:
                    ref = _make_ref(spec, root, var, key, rules, paths=paths)
                except RecordError as e:
                    yield Reject(spec.id, key, "discover", e.reason, key)
                    continue
                ref.annotations["channels"] = channels
                yield ref


def discover_volumes(spec, root: Path) -> Iterator[RecordRef | Reject]:
    var = _pick_variant(spec, root)
    if var.get("dataset_json"):
        yield from _discover_json(spec, root, var)
    else:
        yield from _discover_glob(spec, root, var)


# ----------------------------------------------------------------------------------------------- load
def _labels_int(arr: np.ndarray, rel: str, known: set[int], strict: bool) -> np.ndarray:
    """An integer label map (small integer types kept as they are: no full-volume copy), validated against the
    values the label rules name when `strict`."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise RecordError(f"label map {rel} contains NaN or infinite values")
        r = np.rint(arr)
        if np.abs(arr - r).max(initial=0) > 1e-3:
            raise RecordError(f"label map {rel} has non-integer values")
        arr = r
    lab = arr if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 else arr.astype(np.int32)
    if strict:
        lo, hi = int(lab.min(initial=0)), int(lab.max(initial=0))
        # usually every value in 0..max is named and nothing needs scanning; a few unnamed values are tested one
        # by one (a vectorised compare each), more in one bincount; np.unique for negative or huge values
        small = 0 <= lo and hi < 1 << 16
        unnamed = [v for v in range(lo, hi + 1) if v not in known and v != 0] if small else None
        if unnamed is None:
            extra = sorted(set(np.unique(lab).tolist()) - known - {0})
        elif len(unnamed) <= 4:
            extra = [v for v in unnamed if (lab == v).any()]
        else:
            counts = np.bincount(lab.ravel(), minlength=hi + 1)
            extra = [v for v in unnamed if counts[v]]
        if extra:
            raise RecordError(f"label map {rel} has values {extra} that no label rule names (wrong release?)")
    return lab


def _intensity(var: dict, arr: np.ndarray) -> str:
    kind = var.get("intensity", "auto")
    if kind == "auto":
        return "uint8" if arr.dtype == np.uint8 else "percentile"
    return kind


def pick_volume(arr: np.ndarray, zooms: tuple[float, ...], order: str, var: dict, rel: str
                ) -> tuple[np.ndarray, tuple[float, ...]]:
    """The 4-D rule. An array with one axis more than a channel-free `axis_order` (fMRI/DWI time series, a
    4-D cine, MGH frames, stacked modalities) keeps the volume `volume_index` of its last axis; without that
    option it is rejected with a reason naming the two ways to read it. Trailing singleton axes are not an
    extra axis (NIfTI pads dims with 1)."""
    order = order.upper()
    dims = arr.ndim
    while dims > len(order) and arr.shape[dims - 1] == 1:
        dims -= 1
    if "C" in order or dims != len(order) + 1:
        return arr, zooms
    arr = arr.reshape(arr.shape[:dims])
    n = arr.shape[-1]
    if var.get("volume_index") is None:
        raise RecordError(f"{rel} is a {dims}-D array of shape {arr.shape} ({n} volumes along the last axis) but "
                          f"axis_order {order} has {len(order)} axes: set the catalog option volume_index (which "
                          f"volume to read) or axis_order {order}C with channel_names (every volume a channel)")
    i = int(var["volume_index"])
    if not -n <= i < n:
        raise RecordError(f"{rel}: volume_index {i} is outside the {n} volumes of shape {arr.shape}")
    return arr[..., i], tuple(zooms[:len(order)])


def nan_to_background(arr: np.ndarray, rel: str) -> tuple[np.ndarray, int]:
    """The NaN rule: NaN voxels (outside a resampled field of view, masked-out voxels) become background, the
    volume's lowest finite value (air in CT, the zero of a skull-stripped MR), and are counted. Infinite
    values are not a convention of any writer and still reject the volume (in volume_images)."""
    if arr.dtype.kind != "f" or isinstance(arr, ScaledVolume):  # stored integers have no NaN
        return arr, 0
    nan = np.isnan(arr)
    n = int(nan.sum())
    if n == 0:
        return arr, 0
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise RecordError(f"{rel}: every voxel is NaN or infinite")
    return np.where(nan, finite.min(), arr), n


def _displayed(root: Path, rel: str, arr: np.ndarray, order: str, reader: str, canon: bool, var: dict
               ) -> tuple[np.ndarray, str]:
    """A volume in the display convention (corpus.orientation) with the axis order that names it: NIfTI from its
    affine (display_orientation), MetaImage from its TransformMatrix / AnatomicalOrientation (a header with
    neither, or a 2-D image, as read). `orientation: as_stored` (OCT B-scans and echo images have no patient
    axes) as read."""
    if var.get("orientation", "display") == "as_stored":
        return arr, order
    if reader == "nifti":
        shown, flips = display_orientation(root, rel, order, canon)
    else:
        spatial = [c for c in order if c in "XYZ"]
        dirs = directions_ras(root, rel) if sorted(spatial) == sorted("XYZ") and order.find("C") in (-1, 3) else None
        if dirs is None:
            return arr, order
        letters, flips = display_axes(dirs)
        shown = letters + order[3:]
    return (np.flip(arr, flips) if flips else arr), shown


def read_displayed(root: Path, rel: str, order: str, var: dict, reader: str = "nifti", canonical: bool = False,
                   lazy_scaling: bool = False) -> tuple[np.ndarray, tuple[float, ...], str]:
    """One volume file as the corpus shows it: read, the variant's volume picked (`volume_index`), in the display
    convention; returns the array, its zooms and the axis order naming its axes (to_zyx makes it (Z, Y, X)).
    Every image and label map of load_volume and `medlvr ask`'s NIfTI volumes go through it; load_volume reads
    its images with `lazy_scaling` (read_nifti)."""
    arr, zooms = read_any(root, rel, reader, canonical, lazy_scaling)
    arr, zooms = pick_volume(arr, zooms, order, var, rel)
    arr, order = _displayed(root, rel, arr, order, reader, canonical, var)
    return arr, zooms, order


def load_volume(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    var = _variant_by_name(spec, ref.annotations["variant"])
    reader, canon = _reader(spec, var), bool(var.get("canonical", False))
    stored_order = var.get("axis_order", "XYZ" if reader == "nifti" else "ZYX")
    rules = [LabelRule(r["label"], tuple(r["values"]), r["instances"], r.get("parent")) for r in ref.annotations["rules"]]
    channels: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    spacing = None
    nan_voxels = 0
    for role, rel in ref.paths.items():
        if not role.startswith("image"):
            continue
        arr, zooms, shown = read_displayed(root, rel, stored_order, var, reader, canon, lazy_scaling=True)
        arr, n_nan = nan_to_background(arr, rel)
        nan_voxels += n_nan
        arr, sp = to_zyx(arr, zooms, shown)
        spacing = spacing or sp
        if role.startswith("image:"):
            channels[role[6:]] = arr
            sources[role[6:]] = rel
        elif arr.ndim == 4:
            names = ref.annotations.get("channels") or var.get("channel_names")
            if not names or len(names) != arr.shape[3]:
                raise RecordError(f"{rel}: {arr.shape[3]} channels but channel names {names}")
            for i, n in enumerate(names):
                channels[str(n)] = arr[..., i]  # each sequence is normalised on its own in volume_images
                sources[str(n)] = rel
        else:
            channels[""] = arr
            sources[""] = rel
    if var.get("channel") is not None:  # one named channel of a 4-D (XYZC) image, the others left out
        keep = str(var["channel"])
        if keep not in channels:
            raise RecordError(f"catalog option channel {keep!r} is not one of the channels {sorted(channels)}")
        channels, sources = {keep: channels[keep]}, {keep: sources[keep]}
    if not channels:
        raise RecordError("record has no image file")
    labels = None
    if "label" in ref.paths:
        lab, lab_zooms, lab_order = read_displayed(root, ref.paths["label"], stored_order.replace("C", ""), var,
                                                   reader, canon)
        lab, _ = to_zyx(lab, lab_zooms, lab_order)  # a label map has no channel axis
        known = {v for r in rules for v in r.values}
        labels = _labels_int(lab, ref.paths["label"], known, bool(var.get("strict_labels", True)))
    first = next(iter(channels.values()))
    attributes = dict(ref.attributes, nan_voxels=nan_voxels) if nan_voxels else ref.attributes
    imgs = volume_images(
        channels, labels, rules, source_path=next(iter(sources.values())), intensity=_intensity(var, first),
        spacing_zyx=spacing, percentiles=tuple(spec.normalise.get("percentiles", (0.5, 99.5))),
        cfg=SliceConfig.from_dict(var.get("slices")), attributes=attributes, label_source=ref.paths.get("label"))
    for im in imgs:  # BraTS: each sequence image names its own file
        im.source_path = sources.get(im.attributes.get("sequence", ""), im.source_path)
    return imgs


@dataclass(frozen=True)
class VolumeOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    anchor_glob: Any = None
    anchor_regex: Any = None
    axis_order: Any = None
    canonical: Any = None
    channel: Any = None
    channel_names: Any = None
    channels: Any = None
    channels_from_json: Any = None
    dataset_json: Any = None
    group_attributes: Any = None
    image: Any = None
    intensity: Any = None
    json_labels: Any = None
    label: Any = None
    label_rules: Any = None
    name: Any = None
    orientation: Any = None
    patient_group: Any = None
    phase_from_sidecar: Any = None
    reader: Any = None
    sidecar: Any = None
    slices: Any = None
    strict_labels: Any = None
    tasks: Any = None
    volume_index: Any = None
    variants: tuple[VolumeOptions, ...] | None = None  # one entry per sub-dataset; each overrides the others


register("nifti_volume", discover_volumes, load_volume,
         "NIfTI image + label-map volumes (3-D/4-D, axis order per dataset, dataset.json labels, ED/ES frames)",
         options=VolumeOptions)
