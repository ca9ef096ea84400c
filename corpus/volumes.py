"""3-D volumes -> a capped set of 2-D slices with per-instance boxes (docs/datasets.md §6.1 step 5, §6.3).

Volumes arrive as (Z, Y, X) arrays with Z the axial (reading) axis; adapters reorder before calling.
Instances are found in 3-D first so their ids are stable across slices; each kept slice gets the 2-D
components of every 3-D instance present on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from medlvr.corpus.masks import (LabelRule, all_components, bounding_slices, components_3d_in_box, min_speck_px,
                                 speck_reason, union_box)
from medlvr.corpus.records import RecordError, SourceImage, SourceROI, object_id


@dataclass(frozen=True)
class SliceConfig:
    max_slices_per_volume: int = 12
    extra_slices_per_instance: int = 2  # beyond the largest-area slice
    min_area_ratio: float = 0.4  # extra slices need this share of the instance's largest slice area
    min_z_gap: int = 3  # kept slices of one instance are at least this far apart
    negatives_per_volume: int = 2
    negative_gap: int = 10  # negative slices lie this far from any foreground slice
    min_voxels: int = 8  # 3-D specks below this are dropped before slicing

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "SliceConfig":
        return cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})


def _spread(candidates: Sequence[int], k: int) -> list[int]:
    if k <= 0 or not candidates:
        return []
    if len(candidates) <= k:
        return list(candidates)
    idx = np.linspace(0, len(candidates) - 1, k + 2)[1:-1].round().astype(int)
    return sorted({candidates[i] for i in idx})


def select_slices(instance_areas: list[np.ndarray], foreground: np.ndarray, cfg: SliceConfig) -> list[tuple[int, str]]:
    """Choose slices: (z, why) with why in {"key", "extra", "negative"}.

    instance_areas: per 3-D instance, its pixel area on each slice (Z,).
    foreground: (Z,) bool, any structure on the slice.
    Key slices (largest area per instance) come first, by descending area, then extras, capped; then negatives.
    """
    keys: list[tuple[float, int]] = []
    extras: list[tuple[float, int]] = []
    for areas in instance_areas:
        if areas.max() <= 0:
            continue
        zk = int(areas.argmax())
        keys.append((float(areas[zk]), zk))
        cand = [int(z) for z in np.flatnonzero(areas >= cfg.min_area_ratio * areas[zk]) if abs(z - zk) >= cfg.min_z_gap]
        chosen: list[int] = []
        for z in _spread(cand, cfg.extra_slices_per_instance * 3):
            if len(chosen) >= cfg.extra_slices_per_instance:
                break
            if all(abs(z - c) >= cfg.min_z_gap for c in chosen):
                chosen.append(z)
        extras.extend((float(areas[z]), z) for z in chosen)
    picked: dict[int, str] = {}
    for why, items in (("key", keys), ("extra", extras)):
        for _, z in sorted(items, key=lambda t: (-t[0], t[1])):
            if len(picked) >= cfg.max_slices_per_volume:
                break
            picked.setdefault(z, why)
    out = sorted(picked.items())
    fg = np.flatnonzero(foreground)
    if cfg.negatives_per_volume > 0:
        z_all = np.arange(foreground.shape[0])
        if fg.size:
            dist = np.min(np.abs(z_all[:, None] - fg[None, :]), axis=1)
            neg = [int(z) for z in z_all[dist >= cfg.negative_gap]]
        else:
            neg = [int(z) for z in z_all]
        out += [(z, "negative") for z in _spread(neg, cfg.negatives_per_volume)]
    return out


def rule_mask(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """labels in values, without np.isin's sort: a few equality tests (vectorised, ~10x cheaper than a gather on
    uint8 maps), else one gather through a lookup table; np.isin only for negative labels."""
    if len(values) <= 4:
        m = labels == values[0]
        for v in values[1:]:
            m |= labels == v
        return m
    if labels.min(initial=0) < 0:
        return np.isin(labels, values)
    lut = np.zeros(max(int(labels.max(initial=0)), *values) + 1, dtype=bool)
    lut[[v for v in values if v >= 0]] = True
    return lut[labels]


def slice_areas(lab3d: np.ndarray, n: int) -> np.ndarray:
    """areas[i, z]: pixels of instance i (0 = background) on slice z. lab3d: (Z, Y, X) ints in 0..n or bool
    -> (n + 1, Z) int64. One count per slice for a single instance, else one per instance on its own box
    (instances are small next to the box that holds them all; a whole-box bincount cost 20 ms on a CT liver)."""
    zs = lab3d.shape[0]
    out = np.zeros((n + 1, zs), dtype=np.int64)
    if n == 1:
        out[1] = np.count_nonzero(lab3d.reshape(zs, -1), axis=1)
    elif n > 1:
        for i, box in enumerate(ndimage.find_objects(lab3d, max_label=n), start=1):
            if box is not None:
                out[i, box[0]] = np.count_nonzero((lab3d[box] == i).reshape(box[0].stop - box[0].start, -1), axis=1)
    out[0] = lab3d[0].size - out[1:].sum(axis=0)
    return out


# A volume's window is estimated on at most this many voxels (16.8 M): every BraTS, ACDC or MSD MR sequence fits,
# so its window is exactly the whole volume's; a larger volume is sampled on a regular grid, whose 0.5/99.5
# percentiles sit within 1% of the window width of the whole volume's (tests/corpus/test_volume_memory.py), and
# a 987 x 512 x 512 volume needs a 9.6 M-voxel sample instead of a full mask, a non-zero copy and a sort copy.
WINDOW_SAMPLE_VOXELS = 1 << 24


def window_sample(arr: np.ndarray, max_voxels: int | None = None) -> np.ndarray:
    """A deterministic regular sample of at most `max_voxels` voxels: every s-th voxel along each axis, s the
    smallest stride that fits (1, i.e. the whole volume, when it already fits). A strided view of a memory-mapped
    or lazily read volume touches only the sampled pages of its slices."""
    max_voxels = WINDOW_SAMPLE_VOXELS if max_voxels is None else max_voxels
    step = 1
    while int(np.prod([-(-n // step) for n in arr.shape], dtype=np.int64)) > max_voxels:
        step += 1
    return np.asarray(arr[(slice(None, None, step),) * arr.ndim]) if step > 1 else np.asarray(arr)


def volume_window(arr: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5), name: str = "",
                  max_voxels: int | None = None) -> tuple[float, float]:
    """The intensity window of a non-CT volume: percentiles of its non-zero voxels over the WHOLE volume, so that
    every slice of it is windowed alike (never per slice, never shared between sequences); above `max_voxels`
    voxels (default WINDOW_SAMPLE_VOXELS) on a regular sample of them (window_sample), never a full copy."""
    sample = window_sample(arr, max_voxels)
    nz = sample[sample != 0]
    if nz.size == 0 and sample.size < arr.size:  # a sparse volume the grid missed: its non-zero voxels, slice by slice
        nz = np.concatenate([a[a != 0] for a in map(np.asarray, arr)])
    if nz.size == 0:
        raise RecordError(f"volume {name or 'image'} is all zeros")
    lo, hi = np.percentile(nz, percentiles)
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def _object_of(rule: LabelRule, label_source: str, component: int | None) -> str:
    if rule.source_object:
        return rule.source_object + (f"/component={component}" if component is not None else "")
    if component is None:
        return object_id(label_source, label=rule.label)
    return object_id(label_source, label=rule.label, component=component)


def volume_images(
    channels: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    rules: Sequence[LabelRule],
    *,
    source_path: str,
    intensity: str,
    spacing_zyx: Sequence[float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    cfg: SliceConfig = SliceConfig(),
    min_area: float | None = None,
    attributes: Mapping | None = None,
    label_source: str | None = None,
) -> list[SourceImage]:
    """Slices of one volume as SourceImages sharing the same selection and ROIs across channels.

    channels: name -> (Z, Y, X) array (one entry for single-sequence volumes; "" for no suffix).
    labels: (Z, Y, X) integer label map or None (no annotation: negatives only).
    intensity: "ct_hu" keeps HU for the normaliser's window; "percentile" clips each channel at its own
      percentiles over non-zero voxels of the whole volume (never shared between sequences).
    label_source: the label map's path, which names its objects (`<label_source>#label=L/component=k`).

    Every object (a rule's 3-D component, or the rule's whole structure when instances=False) ends as ROIs or as
    reject rows with a reason: a 3-D speck (voxels and threshold), a slice cap (no kept slice shows it), a 2-D
    piece below the speck size on a kept slice (pixels and threshold). The objects are listed on the first image.
    """
    shapes = {k: v.shape for k, v in channels.items()}
    for name, arr in channels.items():
        if arr.ndim != 3:
            raise RecordError(f"volume {name or 'image'} must be 3-D after reordering, got shape {arr.shape}")
    if labels is not None and any(s != labels.shape for s in shapes.values()):
        raise RecordError(f"image shape {shapes} and label shape {labels.shape} differ")
    for name, arr in channels.items():  # slice by slice: no volume-sized mask (a ScaledVolume knows it is finite)
        if (np.issubdtype(arr.dtype, np.floating) and not getattr(arr, "all_finite", False)
                and not all(np.isfinite(a).all() for a in arr)):
            raise RecordError(f"volume {name or 'image'} contains NaN or infinite values")
    z = next(iter(channels.values())).shape[0]
    label_source = label_source or source_path
    # per rule: (rule, instance labels over the rule's own bounding box, n, areas[i, z], the box's (z, y, x) start,
    # the object id of each instance)
    per_rule: list[tuple[LabelRule, np.ndarray, int, np.ndarray, tuple[int, int, int], dict[int, str]]] = []
    instance_areas: list[np.ndarray] = []
    foreground = np.zeros(z, dtype=bool)
    objects: list[str] = []
    volume_rejects: list[tuple[str, str, str]] = []  # (label, reason, object): objects that reach no slice
    if labels is not None:
        box = bounding_slices(labels)  # everything below works on the label map's non-zero bounding box
        crop = labels[box] if box is not None else labels[:0]
        for rule in rules:
            m = rule_mask(crop, rule.values)
            if rule.instances:
                lab, sizes, rbox = components_3d_in_box(m)
                n = len(sizes) - 1
                ids = {i: _object_of(rule, label_source, i) for i in range(1, n + 1)}
                small = [i for i in range(1, n + 1) if sizes[i] < cfg.min_voxels]
                for i in small:  # 3-D specks: rejected with their size, their ids kept for the others
                    volume_rejects.append((rule.label, speck_reason(int(sizes[i]), cfg.min_voxels, "voxels",
                                                                    "3-D component"), ids[i]))
                if small:
                    lab[np.isin(lab, small)] = 0
            else:
                rbox = bounding_slices(m)
                lab, n = (m[rbox] if rbox is not None else m), 1
                ids = {1: _object_of(rule, label_source, None)}
            if rbox is None:
                continue
            objects.extend(ids.values())
            start = tuple(int(b.start) + int(r.start) for b, r in zip(box, rbox))
            areas = np.zeros((n + 1, z), dtype=np.int64)
            areas[:, start[0]:start[0] + lab.shape[0]] = slice_areas(lab, n)
            per_rule.append((rule, lab, n, areas, start, ids))
            instance_areas.extend(areas[1:])
            foreground[box[0]] |= m.any(axis=(1, 2))
    chosen = select_slices(instance_areas, foreground, cfg)
    kept_z = [zi for zi, why in chosen if why != "negative"]
    for rule, lab, n, areas, _, ids in per_rule:
        for i in range(1, n + 1):
            if areas[i].any() and not areas[i, kept_z].any():
                volume_rejects.append((rule.label, f"slice cap: none of its {int(np.count_nonzero(areas[i]))} "
                                       f"slices is among the {len(kept_z)} kept (max_slices_per_volume "
                                       f"{cfg.max_slices_per_volume})", ids[i]))
    windows: dict[str, tuple[float, float] | None] = {}
    for name, arr in channels.items():
        windows[name] = volume_window(arr, percentiles, name) if intensity == "percentile" else None
    out: list[SourceImage] = []
    area_min = min_speck_px(labels.shape[1:]) if min_area is None and labels is not None else min_area
    for zi, why in chosen:
        rois: list[SourceROI] = []
        slice_rejects: list[tuple[str, str, str]] = []
        for rule, lab, n, areas, (z0, y0, x0), ids in per_rule:
            for i in np.flatnonzero(areas[1:, zi]) + 1:
                m2 = lab[zi - z0] == i  # areas > 0 here, so zi lies inside the rule's box
                zs = np.flatnonzero(areas[i])
                extent = {"z_range": [int(zs[0]), int(zs[-1])]}
                if spacing_zyx is not None:
                    extent["z_extent_mm"] = float((zs[-1] - zs[0] + 1) * spacing_zyx[0])
                comps = all_components(m2)
                big = [c for c in comps if c[1] >= area_min]
                if not rule.instances:  # one structure: ONE box per slice, the union of its pieces
                    big = [union_box(big)] if big else []
                for c_box, c_area in (c for c in comps if c[1] < area_min):
                    slice_rejects.append((rule.label, f"slice {zi}: {speck_reason(c_area, area_min)}", ids[i]))
                for (bx0, by0, bx1, by1), area in big:
                    rois.append(SourceROI(rule.label, (bx0 + x0, by0 + y0, bx1 + x0, by1 + y0), "mask",
                                          int(i) if rule.instances else 0, float(area), rule.parent, dict(extent),
                                          source_object=ids[i]))
        if not rois and why != "negative":  # every piece on it is below the speck size: no image of it (an
            volume_rejects.extend(slice_rejects)  # annotated slice without a box), its rejects go to the volume
            continue
        for ci, (name, arr) in enumerate(channels.items()):
            suffix = f"{name}_z{zi:04d}" if name else f"z{zi:04d}"
            attrs = dict(attributes or {})
            attrs["slice_role"] = why
            if name:
                attrs["sequence"] = name
            out.append(SourceImage(
                source_path=source_path, pixels=np.ascontiguousarray(arr[zi]), intensity=(
                    "window" if intensity == "percentile" else intensity),
                rois=[dataclasses.replace(r, attributes=dict(r.attributes)) for r in rois],
                suffix=suffix, window=windows[name], spacing_mm=tuple(spacing_zyx) if spacing_zyx else None,
                slice_index=zi, slice_axis=0, attributes=attrs,
                roi_rejects=list(slice_rejects) if ci == 0 else [],  # one row per dropped piece, not per channel
            ))
    if objects or volume_rejects:
        if not out:
            raise RecordError("no slice of the volume was kept", roi_rejects=volume_rejects)
        out[0].roi_rejects.extend(volume_rejects)
        out[0].objects = list(objects)
    return out
