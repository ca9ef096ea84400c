"""A11 paired_masks: an image plus mask file(s) matched by a per-dataset file-name rule.

Catalog options (all paths relative to the dataset root, posix):
  sets: one or more image groups, each
      image_glob:    glob of the images
      image_regex:   optional; its named groups become template fields (an image it does not match is rejected)
      exclude_regex: optional; files the glob matches that are not images (BUSI masks share the image folder)
      split:         optional official split, a template ("{part}") mapped through split_map
      masks:         {entry id: path template}; '*' in a template is a wildcard that must match exactly one file
      also:          {entry id: glob template}; further files OR-ed into the entry (BUSI `_mask_1`, `_mask_2`)
  masks: {entry id: {decoder, label | classes | label_rules, missing: error|absent, empty: reject|ok,
                     instances, parent, min_area, threshold, per_file}}   (see corpus.adapters.mask_decoders)
         per_file: true when each file of the entry is its own annotation (BUSI: one lesion per `_mask*.png`):
                   its components are taken file by file, so lesions in separate files stay separate even where
                   they touch (OR-ing them first would fuse two touching lesions into one object)
  negative_regex: images whose empty mask is a valid negative (BUSI normal): zero ROIs, not a reject
  key:            record-key template (default "{path}"); a second image with the same key is a duplicate
  image_mode:     optional PIL mode forced on the image ("L" for greyscale stored as RGB JPEG)
  tables:         sidecars (A14) joined on a key: {path, format: csv|xlsx|ph2_txt, key_col, key: [templates],
                  columns: {column: attribute}, spacing_col, patient_col, required, applies_regex}
  path_attributes: [{pattern, attribute, map, target: image|masks}]  (REFUGE g/n prefix, G/N folder;
                  the key is not `on`, which YAML 1.1 reads as the boolean true)
  folds:          {glob, attribute, applies_regex}: `{"train": [...], "val": [...]}` JSON lists (TN3K)
Template fields: path, dir, name, stem, ext and the image_regex groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import bisect
import fnmatch
import functools
import glob as globlib
import math
import os
import posixpath
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np

from medlvr.corpus.adapters import register
from medlvr.corpus.adapters.images import read_2d, read_pil
from medlvr.corpus.adapters.mask_decoders import decode
from medlvr.corpus.paths import open_confined, rel_path, require_file, safe_path, walk
from medlvr.corpus.adapters.sidecar import read_json, read_table, whitelist
from medlvr.corpus.masks import mask_objects
from medlvr.corpus.records import RecordError, RecordRef, Reject, SourceImage

PH2_COLUMNS = ("Name", "Histological Diagnosis", "Clinical Diagnosis", "Asymmetry", "Pigment Network",
               "Dots/Globules", "Streaks", "Regression Areas", "Blue-Whitish Veil", "Colors")


# ----------------------------------------------------------------------------------------------- sidecars
def read_ph2_txt(path: Path, root: Path | None = None) -> list[dict[str, Any]]:
    """PH2_dataset.txt: `|| IMD003 || <histology> || 0 || 0 | T | A | A | A | A || 4 5 ||`.
    Fields are separated by `||` and the six dermoscopic criteria by `|`; columns are positional, so the
    header is checked to name the first column and every data row must have exactly ten fields."""
    try:
        with open_confined(root or path.parent, path, "r", "discover", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise RecordError(f"cannot read sidecar {path.name}: {e}", stage="discover")
    rows = [ln for ln in lines if ln.strip().startswith("||")]
    if not rows or "Name" not in rows[0]:
        raise RecordError(f"{path.name}: no '|| Name ||' header row; not the PH2 table", stage="discover")
    out = []
    for ln in rows[1:]:
        fields = [f.strip() for f in re.split(r"\|\|?", ln.strip().strip("|"))]
        if len(fields) != len(PH2_COLUMNS):
            out.append({"Name": fields[0] if fields else "", "_error": f"{len(fields)} fields, expected 10"})
            continue
        out.append(dict(zip(PH2_COLUMNS, fields)))
    return out


def _num(s: str) -> Any:
    """CSV cells arrive as text; numbers become numbers so attributes compare the same from csv and xlsx."""
    for cast in (int, float):
        try:
            v = cast(s)
            return v if not isinstance(v, float) or math.isfinite(v) else s
        except ValueError:
            pass
    return s


def _key_str(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():  # xlsx stores 1 as 1.0
        v = int(v)
    return str(v).strip()


def _load_table(root: Path, t: dict) -> dict[str, list[dict]]:
    """Rows keyed by the key column; the whole dataset fails when a declared sidecar is missing or corrupt."""
    path = require_file(root, t["path"])
    fmt = t.get("format") or path.suffix.lower().lstrip(".")
    rows = read_ph2_txt(path, root) if fmt == "ph2_txt" else read_table(path, t.get("sheet"), root)
    if rows and t["key_col"] not in rows[0]:
        raise RecordError(f"{t['path']}: key column {t['key_col']!r} not in header {sorted(rows[0])}",
                          stage="discover")
    keyed: dict[str, list[dict]] = {}
    for r in rows:
        keyed.setdefault(_key_str(r.get(t["key_col"], "")), []).append(r)
    return keyed


def _folds(root: Path, f: dict) -> dict[int, int]:
    """Image index -> the fold in whose `val` list it appears."""
    out: dict[int, int] = {}
    for p in walk(root, f["glob"]):
        m = re.search(r"fold(\d+)", p.name)
        data = read_json(p, root)
        if not m or not isinstance(data, dict) or not isinstance(data.get("val"), list):
            raise RecordError(f"{p.name}: not a fold file with a 'val' list", stage="discover")
        for v in data["val"]:
            s = PurePosixPath(str(v)).stem
            if s.isdigit():
                out[int(s)] = int(m.group(1))
    return out


# ----------------------------------------------------------------------------------------------- discover
def _fields(rel: str, groups: dict[str, str]) -> dict[str, str]:
    p = PurePosixPath(rel)
    d = {"path": rel, "dir": str(p.parent), "name": p.name, "stem": p.stem, "ext": p.suffix}
    d.update({k: v for k, v in groups.items() if v is not None})
    return d


def _match(root: Path, template: str, fields: dict[str, str]) -> list[str]:
    """Existing files a mask template names (refusing paths that leave the root). A literal template names
    one path; a wildcard template is globbed with the fields escaped, so names with '[' or '*' stay literal."""
    if "*" not in template:
        rel = template.format(**fields)
        return [rel] if safe_path(root, rel).is_file() else []
    pattern = template.format(**{k: globlib.escape(v) for k, v in fields.items()})
    if ".." in PurePosixPath(pattern).parts or pattern.startswith("/"):
        raise RecordError(f"mask pattern escapes the dataset root: {pattern!r}", stage="discover")
    parent, name_pat = posixpath.split(pattern)
    if globlib.has_magic(parent):  # wildcard folders: a real glob
        matches = [rel_path(root, p) for p in walk(root, pattern)]
    else:  # wildcard in the file name only: one listing per folder instead of one glob per image
        names = _listing(str(root / parent), (root / parent).stat().st_mtime_ns) if (root / parent).is_dir() else ()
        # the literal start of the pattern bounds the candidates in the sorted listing (bisect, not a scan)
        cut = min([i for i in (name_pat.find(c) for c in "*?[") if i >= 0], default=len(name_pat))
        prefix = name_pat[:cut]
        lo = bisect.bisect_left(names, prefix)
        hi = bisect.bisect_left(names, prefix + "\U0010ffff")
        matches = [posixpath.join(parent, n) if parent else n for n in names[lo:hi] if fnmatch.fnmatchcase(n, name_pat)]
    for rel in matches:
        safe_path(root, rel)  # a symlink pointing out of the root is refused here
    return matches


@functools.lru_cache(maxsize=64)
def _listing(folder: str, mtime_ns: int) -> tuple[str, ...]:
    """Visible file names of a folder, sorted (keyed by its mtime: a new file invalidates the entry)."""
    return tuple(sorted(e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()))


def _record(spec, root: Path, s: dict, rel: str, fields: dict, ctx: dict) -> RecordRef:
    """One image's RecordRef; raises RecordError(stage=discover) for a bad reference."""
    opts = spec.options
    safe_path(root, rel)
    paths = {"image": rel}
    for eid, tmpl in (s.get("masks") or {}).items():
        entry = opts["masks"][eid]
        found = _match(root, tmpl, fields)
        if len(found) > 1:
            raise RecordError(f"mask {eid}: {len(found)} files match {tmpl!r}: {found[:3]}", stage="discover")
        if not found:
            if entry.get("missing", "error") == "absent":
                continue  # IDRiD/ADAM: no file means the lesion is absent from this image
            raise RecordError(f"mask file referenced but missing: {tmpl.format(**fields)}", stage="discover")
        paths[f"mask:{eid}"] = found[0]
        extra = (s.get("also") or {}).get(eid)
        for i, other in enumerate(m for m in (_match(root, extra, fields) if extra else []) if m != found[0]):
            paths[f"mask:{eid}#{i + 1}"] = other
    attrs: dict[str, Any] = {}
    patient = None
    spacing = None
    for t, keyed in ctx["tables"]:
        if t.get("applies_regex") and not re.search(t["applies_regex"], rel):
            continue  # e.g. TN3K's label4trainval.csv says nothing about test-image/0000.jpg
        keys = [k.format(**fields) for k in (t.get("key") or ["{stem}"])]
        rows = next((keyed[k] for k in keys if k in keyed), None)
        if rows is None:
            if t.get("required", False):
                raise RecordError(f"no row for {keys[0]!r} in {t['path']}", stage="discover")
            continue
        if len(rows) > 1:
            raise RecordError(f"{len(rows)} rows for {keys[0]!r} in {t['path']} (duplicate id)", stage="discover")
        row = rows[0]
        if "_error" in row:
            raise RecordError(f"malformed row for {keys[0]!r} in {t['path']}: {row['_error']}", stage="discover")
        for col, name in (t.get("columns") or {}).items():
            if row.get(col) not in (None, ""):
                attrs[name] = _num(row[col]) if isinstance(row[col], str) else row[col]
        if t.get("spacing_col"):
            try:
                sp = float(row.get(t["spacing_col"]))
            except (TypeError, ValueError):
                sp = float("nan")
            if not math.isfinite(sp) or sp <= 0:
                raise RecordError(f"invalid pixel size {row.get(t['spacing_col'])!r} in {t['path']}",
                                  stage="discover")
            spacing = (sp, sp)
        if t.get("patient_col"):
            patient = _key_str(row.get(t["patient_col"], "")) or None
            if patient is None:
                raise RecordError(f"empty {t['patient_col']} for {keys[0]!r} in {t['path']}", stage="discover")
    for pa in opts.get("path_attributes") or ():
        targets = [rel] if pa.get("target", "image") == "image" else [v for k, v in paths.items() if k != "image"]
        for target in targets:
            m = re.search(pa["pattern"], target)
            if m:
                attrs[pa["attribute"]] = (pa.get("map") or {}).get(m.group(1), m.group(1))
                break
    folds = opts.get("folds")
    if folds and ctx["folds"] and re.search(folds.get("applies_regex", ""), rel) and fields["stem"].isdigit():
        k = ctx["folds"].get(int(fields["stem"]))
        if k is not None:
            attrs[folds["attribute"]] = k
    split = None
    if s.get("split"):
        split = s["split"].format(**fields)
        split = (s.get("split_map") or {}).get(split, split)
    key = opts.get("key", "{path}").format(**fields)
    return RecordRef(key=key, paths=paths, annotations={"fields": fields, "spacing": spacing}, patient=patient,
                     split=split, attributes=attrs)


def discover(spec, root: Path) -> Iterator[RecordRef | Reject]:
    opts = spec.options
    sets = opts.get("sets") or []
    if not sets:
        raise RecordError(f"{spec.id}: paired_masks needs options.sets", stage="discover")
    ctx = {"tables": [(t, _load_table(root, t)) for t in opts.get("tables") or ()],
           "folds": _folds(root, opts["folds"]) if opts.get("folds") else {}}
    seen: dict[str, str] = {}
    for s in sets:
        rx = re.compile(s["image_regex"]) if s.get("image_regex") else None
        ex = re.compile(s["exclude_regex"]) if s.get("exclude_regex") else None
        for p in walk(root, s["image_glob"]):
            rel = rel_path(root, p)
            if ex and ex.search(rel):
                continue
            m = rx.search(rel) if rx else None
            if rx and not m:
                yield Reject(spec.id, rel, "discover", "image name does not follow the dataset's naming rule", rel)
                continue
            fields = _fields(rel, m.groupdict() if m else {})
            try:
                ref = _record(spec, root, s, rel, fields, ctx)
            except RecordError as e:
                yield Reject(spec.id, rel, "discover", e.reason, rel)
                continue
            except (KeyError, IndexError, ValueError) as e:  # a template naming a field the image lacks
                yield Reject(spec.id, rel, "discover", f"file-name rule does not apply: {e!r}", rel)
                continue
            if ref.key in seen:
                yield Reject(spec.id, rel, "discover", f"duplicate record id {ref.key!r} (also {seen[ref.key]})",
                             ref.key)
                continue
            seen[ref.key] = rel
            yield ref


# --------------------------------------------------------------------------------------------------- load
def load(spec, root: Path, ref: RecordRef) -> list[SourceImage]:
    opts = spec.options
    fields = ref.annotations["fields"]
    px = read_2d(safe_path(root, ref.paths["image"]), mode=opts.get("image_mode"), root=root)
    img = px.array
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 2:
        raise RecordError(f"image has unusable shape {img.shape}")
    h, w = img.shape[:2]
    # (label, file or None) -> [mask, instances, parent, min_area, files]; entries OR their files label by label,
    # except a `per_file` entry, whose files stay apart
    merged: dict[tuple[str, str | None], list] = {}
    entry_any: dict[str, bool] = {}
    for role, rel in ref.paths.items():
        if not role.startswith("mask:"):
            continue
        eid = role[5:].split("#")[0]
        entry = opts["masks"][eid]
        path = safe_path(root, rel)
        if not path.is_file():
            raise RecordError(f"mask file referenced but missing: {rel}")
        arr = read_pil(path, root=root)
        if arr.shape[:2] != (h, w):
            raise RecordError(f"mask {PurePosixPath(rel).name} is {arr.shape[1]}x{arr.shape[0]} "
                              f"but the image is {w}x{h}")
        for d in decode(entry, arr):
            label = d.label.format(**fields) if "{" in d.label else d.label
            slot = merged.setdefault((label, rel if entry.get("per_file") else None),
                                     [np.zeros((h, w), bool), d.instances, d.parent, entry.get("min_area"), []])
            slot[0] |= d.mask
            if d.mask.any() and rel not in slot[4]:
                slot[4].append(rel)  # the files that hold the label: its objects are named after them
            entry_any[eid] = entry_any.get(eid, False) or bool(d.mask.any())
    negative = bool(opts.get("negative_regex")) and re.search(opts["negative_regex"], ref.paths["image"])
    for role in ref.paths:
        eid = role[5:].split("#")[0] if role.startswith("mask:") else None
        if eid and not entry_any.get(eid) and opts["masks"][eid].get("empty", "reject") == "reject" and not negative:
            raise RecordError(f"mask {eid!r} is empty for an image that should show it")
    src = SourceImage(source_path=ref.paths["image"], pixels=img, intensity=px.intensity, window=px.window,
                      window_name=px.window_name, spacing_mm=ref.annotations.get("spacing") or px.spacing_mm,
                      attributes=whitelist(ref.attributes, spec.attributes), patient=ref.patient)
    src.objects = []
    for (label, _), (mask, instances, parent, min_area, rels) in merged.items():
        rois, rejects, objects = mask_objects(mask, label, source="+".join(rels), instances=instances,
                                              parent=parent, min_area=min_area)
        src.rois.extend(rois)
        src.roi_rejects.extend(rejects)
        src.objects.extend(objects)
    return [src]


@dataclass(frozen=True)
class PairedMasksOptions:
    """Catalog `options:` read by this module's adapter (None: its default; see corpus.adapters)."""

    folds: Any = None
    image_mode: Any = None
    key: Any = None
    masks: Any = None
    negative_regex: Any = None
    path_attributes: Any = None
    sets: Any = None
    tables: Any = None


register("paired_masks", discover, load,
         "image + mask file(s) by a file-name rule; binary, inverted, red-channel, value-coded, outline-fill "
         "and label-map decoders; several files OR-ed; sidecar tables for attributes, spacing and patients",
         options=PairedMasksOptions)
