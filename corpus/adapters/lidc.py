"""A4 `dicom_series_lidc_xml`: LIDC-IDRI CT series with their reader XML (docs/datasets.md §2.1 no. 2).

One record per CT series: the `NNN.xml` file and the DICOM slices beside it.
  * Slices are sorted by their ImagePositionPatient along the slice normal (ImageOrientationPatient's row x
    column cosines, signed to point mostly along +x/+y/+z: an axial series runs foot to head, as by
    ImagePositionPatient[2] ascending); file names and InstanceNumber are not trusted.
  * Pixels and outlines are shown in the one display convention (corpus.orientation, docs/datasets.md
    "Orientation"), derived from ImageOrientationPatient (LPS): x towards the patient's left, y towards posterior.
    Outlines are drawn in the stored pixel grid and flipped with the pixels, so boxes stay exact.
  * HU = stored * RescaleSlope + RescaleIntercept.
  * XML is read namespace-aware (default namespace http://www.nih.gov; tags matched by local name so older
    files without the namespace also parse). `IdriReadMessage` files (CR/DX radiograph reads) are skipped.
  * Each reader's nodule outline on a slice is the union of its `inclusion=TRUE` edgeMap polygons minus its
    `inclusion=FALSE` polygons (holes); polygons are filled with their boundary pixels (corpus.masks).
  * An outline's slice is the one whose SOPInstanceUID equals `imageSOP_UID`, else the one at
    `imageZposition` (within half the slice gap); an outline matching neither is reported as an ROI reject.
  * Readers are not linked between reading sessions, so the annotations of one nodule are grouped by the
    distance between their 3-D centroids (in mm), like pylidc's `cluster_annotations`: link annotations of
    different readers closer than `cluster_tol_mm`; while a group still holds two annotations of one reader,
    shrink the tolerance (x0.9) and regroup.
  * A nodule's mask is the consensus of its readers (voxels marked by >= `consensus_level` of the group;
    pylidc's clevel=0.5), or their union when the readers do not overlap at all. The masks go through the
    volume slice selector: the largest slice per nodule plus spaced extra slices.
  * Nodules < 3 mm (a single edgeMap point) and non-nodules (a locus) are points, never boxes: they are kept
    as the image attribute `point_annotations` (slice index, x, y in displayed pixels).
  * Accounting: every nodule read is an object `<xml>#reader=R/nodule=N` (N: its position in the session).
    A nodule (a group of reads) is one structure: one box per kept slice, named by its first read; the other
    reads are rejects "fused with ... by the reader-agreement rule"; points are rejects that say where they went.
    Readers outline nodules >= 3 mm, so no speck size applies (min_area_px 1, min_voxels 1).
Options: xml_glob, label (default "nodule"), cluster_tol_mm (10), consensus_level (0.5), min_area_px (1),
  slices (SliceConfig).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.images import charge_dicom, one_line_cause, plane_orientation, read_dicom_volume
from medlvr.corpus.paths import is_within, open_confined, rel_path, safe_path, walk
from medlvr.corpus.masks import LabelRule, polygon_mask
from medlvr.corpus.orientation import dicom_directions_ras, display_axes, zyx_index_to_display, zyx_to_display
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage, object_id
from medlvr.corpus.volumes import SliceConfig, volume_images

RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
           "spiculation", "texture", "malignancy")


# ------------------------------------------------------------------------------------------------ the XML
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _kids(el, name: str) -> list:
    return [c for c in el if _local(c.tag) == name]


def _text(el, name: str) -> str | None:
    k = _kids(el, name)
    return k[0].text.strip() if k and k[0].text else None


def _points(el, name: str) -> list[list[float]]:
    out = []
    for p in _kids(el, name):
        out.append([float(_text(p, "xCoord")), float(_text(p, "yCoord"))])
    return out


def _roi(el) -> dict[str, Any]:
    z = _text(el, "imageZposition")
    try:
        return {"sop": _text(el, "imageSOP_UID"), "z": float(z) if z is not None else None,
                "inclusion": (_text(el, "inclusion") or "TRUE").upper() != "FALSE",
                "xy": _points(el, "edgeMap")}
    except (TypeError, ValueError):
        return {"error": f"outline with a missing or non-numeric coordinate (z={z})"}


def parse_lidc_xml(path: Path, root: Path | None = None) -> dict[str, Any] | None:
    """Plain-data reads of one LIDC XML file; None for the radiograph schema (IdriReadMessage)."""
    try:
        with open_confined(root or path.parent, path, "rb", "discover") as f:
            tree = ET.parse(f)
    except (ET.ParseError, OSError) as e:
        raise RecordError(f"cannot parse LIDC XML {path.name}: {e}", stage="discover")
    top = tree.getroot()
    if _local(top.tag) == "IdriReadMessage":
        return None
    if _local(top.tag) != "LidcReadMessage":
        raise RecordError(f"{path.name}: root element {_local(top.tag)!r} is not LidcReadMessage", stage="discover")
    header = (_kids(top, "ResponseHeader") or [top])[0]
    readers = []
    for r, session in enumerate(_kids(top, "readingSession")):
        nodules, points = [], []
        for index, n in enumerate(_kids(session, "unblindedReadNodule"), start=1):
            nid = _text(n, "noduleID") or ""
            rois = [_roi(x) for x in _kids(n, "roi")]
            good = [x for x in rois if "error" not in x and x["inclusion"]]
            if good and all(len(x["xy"]) < 3 for x in good):  # < 3 mm: one point, not an outline
                points.append({"kind": "small nodule", "id": nid, "sop": good[0]["sop"], "z": good[0]["z"],
                               "xy": good[0]["xy"][0] if good[0]["xy"] else None, "index": index})
                continue
            chars: dict[str, float] = {}
            for c in _kids(n, "characteristics"):
                for k in RATINGS:
                    v = _text(c, k)
                    if v is not None and v.lstrip("-").isdigit():
                        chars[k] = int(v)
            nodules.append({"id": nid, "rois": rois, "ratings": chars, "index": index})
        for n in _kids(session, "nonNodule"):
            z = _text(n, "imageZposition")
            try:
                xy = (_points(n, "locus") or [None])[0]
                points.append({"kind": "non-nodule", "id": _text(n, "nonNoduleID") or "",
                               "sop": _text(n, "imageSOP_UID"), "z": float(z) if z else None, "xy": xy})
            except (TypeError, ValueError):
                continue  # a point without usable coordinates carries nothing to keep
        readers.append({"nodules": nodules, "points": points})
    return {"series_uid": _text(header, "SeriesInstanceUid") or _text(header, "SeriesInstanceUID"),
            "readers": readers}


# ------------------------------------------------------------------------------------------------ discover
def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    seen: dict[str, str] = {}
    for xp in walk(root, spec.options.get("xml_glob", "LIDC-IDRI/*/*/*/*.xml")):
        rel = rel_path(root, xp)
        try:
            parsed = parse_lidc_xml(xp, root)
        except RecordError as e:
            yield Reject(spec.id, rel, "discover", e.reason, rel)
            continue
        if parsed is None:
            continue  # radiograph read (IdriReadMessage): not a CT series, not a record of this adapter
        series_dir = rel_path(root, xp.parent)
        slices = []
        for p in sorted(xp.parent.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() != ".dcm":
                continue
            if not is_within(root, p) or not p.is_file():
                yield Reject(spec.id, rel_path(root, p), "discover", f"slice {rel_path(root, p)} resolves outside "
                             f"the dataset root (symlink?) or is not a file", rel)
                slices = None
                break
            slices.append(rel_path(root, p))
        if slices is None:
            continue
        if not slices:
            yield Reject(spec.id, series_dir, "discover", "no DICOM slices beside the LIDC XML", rel)
            continue
        key = parsed["series_uid"] or series_dir
        if key in seen:
            yield Reject(spec.id, series_dir, "discover", f"duplicate series {key} (also in {seen[key]})", rel)
            continue
        seen[key] = series_dir
        yield RecordRef(key=key, paths={"xml": rel, "series": series_dir},
                        annotations={"readers": parsed["readers"], "slices": slices})


# ---------------------------------------------------------------------------------------------- the series
def _unreadable(rel: str, ds, e: BaseException) -> RecordError:
    ts = getattr(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None), "name", "unknown")
    return RecordError(f"unreadable DICOM slice {Path(rel).name} (transfer syntax {ts}): {one_line_cause(e)}")


def _decode_slice(root: Path, rel: str, shape: tuple[int, ...]) -> np.ndarray:
    """One slice of a series as float32 HU (modality LUT applied), or a RecordError naming it."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        with open_confined(root, rel) as f:
            ds = pydicom.dcmread(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array
    except (RecordError, MemoryError):
        raise
    except Exception as e:  # pydicom raises many types for broken or unsupported files
        raise _unreadable(rel, locals().get("ds"), e)
    if raw.ndim != 2:
        raise RecordError(f"slice {Path(rel).name} is not a single 2-D frame: shape {raw.shape}")
    if raw.shape != tuple(shape):
        raise RecordError(f"slices of different sizes in one series: {sorted({raw.shape, tuple(shape)})}")
    return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)


def read_series(root: Path, slices: list[str]) -> tuple[np.ndarray, list[float], list[str], tuple[float, float],
                                                       np.ndarray]:
    """HU volume (Z, Y, X) as stored (slice, row, column), its slices sorted along the slice normal; their
    ImagePositionPatient[2] (the XML's imageZposition), SOP UIDs, pixel spacing and the RAS directions of the
    (column, row, slice) axes (corpus.orientation.dicom_directions_ras; ImageOrientationPatient of the first
    slice, standard axial when no slice has one)."""
    import pydicom

    items = []
    iop = None
    for rel in slices:
        p = safe_path(root, rel)
        try:
            with open_confined(root, rel) as f:
                ds = pydicom.dcmread(f, stop_before_pixels=True)  # pass 1: headers only; pixels go to their place
            if str(getattr(ds, "NumberOfFrames", "1")).strip() not in ("", "1"):
                # an enhanced CT (one file holding the series): its frames are the slices, in their positions
                vol = read_dicom_volume(p, root)
                iop = iop or plane_orientation(ds)
                # frame positions: along the unsigned normal (row x column cosines), signed below
                items.extend((z, vol.sop_uid, hu, vol.spacing_mm or (1.0, 1.0), z)
                             for z, hu in zip(vol.positions, vol.values))
                continue
            charge_dicom(ds, Path(rel).name)
            shape = (int(ds.Rows), int(ds.Columns))
        except (RecordError, MemoryError):
            raise
        except Exception as e:  # pydicom raises many types for broken or unsupported files
            raise _unreadable(rel, locals().get("ds"), e)
        ipp = getattr(ds, "ImagePositionPatient", None)
        if ipp is None or len(ipp) != 3:
            raise RecordError(f"slice {Path(rel).name} has no ImagePositionPatient")
        iop = iop or plane_orientation(ds)
        ps = getattr(ds, "PixelSpacing", None)
        items.append((float(ipp[2]), str(getattr(ds, "SOPInstanceUID", "")), (rel, shape),
                      (float(ps[0]), float(ps[1])) if ps is not None and len(ps) == 2 else (1.0, 1.0),
                      tuple(float(v) for v in ipp)))
    iop = iop or [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    if not np.isfinite(iop).all() or np.linalg.norm(np.cross(iop[:3], iop[3:])) < 0.5:
        raise RecordError(f"ImageOrientationPatient {iop} is not two orthogonal directions; cannot orient the series")
    directions, normal = dicom_directions_ras(iop[:3], iop[3:])
    sign = 1.0 if np.dot(np.cross(iop[:3], iop[3:]), normal) > 0 else -1.0
    # each slice's position along the slice normal (mm): an ImagePositionPatient, or a frame's unsigned position
    along = [float(np.dot(t[4], normal)) if isinstance(t[4], tuple) else sign * t[4] for t in items]
    order = sorted(range(len(items)), key=lambda i: along[i])
    items = [items[i] for i in order]
    if len({round(along[i], 6) for i in order}) != len(items):
        raise RecordError("two slices share one position along the slice normal (ImagePositionPatient); "
                          "cannot order the series")
    zs = [t[0] for t in items]
    shapes = {t[2].shape if isinstance(t[2], np.ndarray) else t[2][1] for t in items}
    if len(shapes) != 1:
        raise RecordError(f"slices of different sizes in one series: {sorted(shapes)}")
    # pass 2: one float32 volume, each slice decoded straight into its place (np.stack of the decoded slices
    # held the volume twice; now the peak is the volume and one slice)
    vol = np.empty((len(items),) + next(iter(shapes)), dtype=np.float32)
    for i, t in enumerate(items):
        hu = t[2] if isinstance(t[2], np.ndarray) else _decode_slice(root, t[2][0], vol.shape[1:])
        if not np.isfinite(hu).all():
            raise RecordError("series contains non-finite HU values")
        vol[i] = hu
        items[i] = (t[0], t[1], None, t[3], t[4])
    return vol, zs, [t[1] for t in items], items[0][3], directions


def _slice_of(roi: dict, by_sop: dict[str, int], zs: list[float]) -> int | None:
    if roi.get("sop") in by_sop:
        return by_sop[roi["sop"]]
    if roi.get("z") is None:
        return None
    gap = float(np.min(np.diff(zs))) if len(zs) > 1 else 1.0
    k = int(np.argmin([abs(z - roi["z"]) for z in zs]))
    return k if abs(zs[k] - roi["z"]) <= max(0.01, gap / 2) else None


def reader_masks(nodule: dict, shape: tuple[int, int], by_sop, zs) -> tuple[dict[int, np.ndarray], list[str]]:
    """{slice index: outline mask} of one reader's nodule (inclusion polygons minus holes) and problems."""
    inc: dict[int, np.ndarray] = {}
    holes: dict[int, np.ndarray] = {}
    problems = []
    for roi in nodule["rois"]:
        if "error" in roi:
            problems.append(roi["error"])
            continue
        k = _slice_of(roi, by_sop, zs)
        if k is None:
            problems.append(f"outline on an unknown slice (SOP {roi['sop']}, z {roi['z']})")
            continue
        m = polygon_mask(shape, np.asarray(roi["xy"], dtype=float))
        tgt = inc if roi["inclusion"] else holes
        tgt[k] = tgt[k] | m if k in tgt else m
    for k, h in holes.items():
        if k in inc:
            inc[k] &= ~h
    return {k: m for k, m in inc.items() if m.any()}, problems


def cluster_annotations(anns: list[dict], tol_mm: float, factor: float = 0.9, min_tol: float = 0.1) -> list[list[int]]:
    """Group annotations (each {reader, centroid}) of the same nodule by centroid distance."""
    n = len(anns)
    c = np.array([a["centroid"] for a in anns], dtype=float).reshape(n, 3)
    d = np.linalg.norm(c[:, None, :] - c[None, :, :], axis=2) if n else np.zeros((0, 0))
    tol = tol_mm
    while True:
        parent = list(range(n))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(n):
            for j in range(i + 1, n):
                if d[i, j] <= tol and anns[i]["reader"] != anns[j]["reader"]:
                    parent[find(i)] = find(j)
        groups: dict[int, list[int]] = {}
        for i in range(n):
            groups.setdefault(find(i), []).append(i)
        out = sorted(groups.values())
        clash = any(len({anns[i]["reader"] for i in g}) < len(g) for g in out)
        if not clash or tol <= min_tol:
            return out
        tol *= factor


def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    o = spec.options
    label = o.get("label", "nodule")
    vol, zs, sops, spacing, directions = read_series(root, ref.annotations["slices"])
    shape = vol.shape[1:]
    by_sop = {s: k for k, s in enumerate(sops) if s}
    anns, problems, points, objects = [], [], [], []
    xml = ref.paths["xml"]
    for r, reader in enumerate(ref.annotations["readers"]):
        for nod in reader["nodules"]:
            # a nodule read: the XML, the reading session and the read's position in it (never its id text)
            oid = object_id(xml, reader=r + 1, nodule=nod.get("index", 0))
            objects.append(oid)
            masks, probs = reader_masks(nod, shape, by_sop, zs)
            problems += [(label, p, oid) for p in probs]
            if not masks:
                if not probs:
                    problems.append((label, f"reader {r + 1} nodule read has an empty outline", oid))
                continue
            ks = sorted(masks)
            areas = np.array([masks[k].sum() for k in ks], dtype=float)
            cyx = np.array([np.argwhere(masks[k]).mean(axis=0) for k in ks])
            cy, cx = (cyx * areas[:, None]).sum(axis=0) / areas.sum()
            cz = float((np.array([zs[k] for k in ks]) * areas).sum() / areas.sum())
            anns.append({"reader": r, "masks": masks, "ratings": nod["ratings"], "object": oid,
                         "index": nod.get("index", 0),
                         "centroid": (cx * spacing[1], cy * spacing[0], cz)})
        for p in reader["points"]:
            k = _slice_of(p, by_sop, zs)
            if k is not None and p["xy"] is not None:  # its place on the displayed volume
                z, y, x = zyx_index_to_display((k, p["xy"][1], p["xy"][0]), vol.shape, directions)
                points.append({"kind": p["kind"], "reader": r + 1, "slice": int(z), "x": x, "y": y})
            if p["kind"] == "small nodule":  # an object of the XML too: accounted as a point, never a box
                oid = object_id(xml, reader=r + 1, nodule=p.get("index", 0))
                objects.append(oid)
                problems.append((label, "nodule < 3 mm marked by one point: kept in the image attribute "
                                 "point_annotations, not a box" if k is not None and p["xy"] is not None else
                                 "nodule < 3 mm marked by one point on an unknown slice", oid))
    labels = np.zeros(vol.shape, dtype=np.uint8)
    nodule_attrs: dict[int, dict] = {}
    level = float(o.get("consensus_level", 0.5))
    groups = cluster_annotations(anns, float(o.get("cluster_tol_mm", 10.0)))
    rules = []
    for g in groups[254:]:
        problems += [(label, "more than 254 nodules in one series", anns[i]["object"]) for i in g]
    for gi, g in enumerate(groups[:254], start=1):
        # the group's boxes name its first read; the other reads are fused into it (reader-agreement rule)
        rules.append(LabelRule(label, (gi,), False, source_object=anns[g[0]]["object"]))  # one box a slice
        first = f"reader {anns[g[0]]['reader'] + 1}, nodule read {anns[g[0]]['index']}"  # of the same XML
        problems += [(label, f"fused with the read ({first}) by the reader-agreement rule ({len(g)} reads of one "
                      f"nodule)", anns[i]["object"]) for i in g[1:]]
        votes = np.zeros(vol.shape, dtype=np.uint8)
        for i in g:
            for k, m in anns[i]["masks"].items():
                votes[k] += m
        consensus = votes >= max(1.0, level * len(g))
        how = f"{int(level * 100)}%"
        if not consensus.any():
            consensus, how = votes > 0, "union"  # readers disjoint: keep their union rather than nothing
        labels[consensus & (labels == 0)] = gi
        ratings = {k: float(np.median([anns[i]["ratings"][k] for i in g if k in anns[i]["ratings"]]))
                   for k in RATINGS if any(k in anns[i]["ratings"] for i in g)}
        nodule_attrs[gi] = {"n_readers": len(g), "consensus": how, **{f"{k}_median": v for k, v in ratings.items()}}
    gap = float(np.median(np.abs(np.diff(zs)))) if len(zs) > 1 else 1.0
    # outlines are in the stored pixel grid: the masks are drawn there, then pixels and labels are shown in the
    # display convention together (corpus.orientation), so every box follows its pixels through the flips
    letters, _ = display_axes(directions)
    stored_mm = (spacing[1], spacing[0], gap)  # (column, row, slice)
    spacing_zyx = tuple(stored_mm[letters.index(c)] for c in "ZYX")
    vol, labels = zyx_to_display(vol, directions), zyx_to_display(labels, directions)
    # readers outline nodules >= 3 mm (the dataset's own rule): every outlined voxel counts, no speck size
    cfg = dataclasses.replace(SliceConfig.from_dict(o.get("slices")), min_voxels=1)
    try:
        images = volume_images({"": vol}, labels, rules, source_path=ref.paths["series"], intensity="ct_hu",
                               spacing_zyx=spacing_zyx, cfg=cfg,
                               min_area=float(o.get("min_area_px", 1)),
                               attributes={"point_annotations": points} if points else None)
    except RecordError as e:
        raise RecordError(e.reason, e.stage, e.roi_rejects + problems) from None
    for im in images:
        for roi in im.rois:  # the nodule's readers and median ratings, by the consensus label under the box
            x0, y0, x1, y1 = (int(v) for v in roi.box)
            vals = labels[im.slice_index, y0:y1, x0:x1]
            vals = vals[vals > 0]
            if vals.size:
                roi.attributes.update(nodule_attrs[int(np.bincount(vals).argmax())])
    if images:
        images[0].roi_rejects.extend(problems)
        images[0].objects = list(dict.fromkeys([*objects, *(images[0].objects or [])]))
    elif objects:
        raise RecordError("the series gave no slice", roi_rejects=problems)
    return images


@dataclass(frozen=True)
class LidcOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    xml_glob: Any = None
    label: Any = None
    consensus_level: Any = None
    cluster_tol_mm: Any = None
    slices: Any = None


register("dicom_series_lidc_xml", discover, load,
         "LIDC-IDRI: DICOM CT series + reader XML; consensus nodule masks -> boxes per slice",
         options=LidcOptions)
