"""`medlvr catalog check`: read a user's download the way ingest would, write nothing, and say per dataset what
would be lost (docs/datasets.md, "Checking a download before a build").

Per dataset: how many files each layout glob matches (a glob matching nothing is a problem), files that neither a
layout glob, a file the catalog options name, nor a discovered record takes (grouped by folder and extension),
labels found on annotation objects that the catalog neither maps nor ignores (with counts), records that would be
rejected, and the annotation objects per outcome (written as boxes, rejected by reason, lost). Every record is
loaded and normalised in memory exactly as ingest does (corpus.ingest.process_record); nothing is encoded to a
file, and duplicate images across records are not looked for (that needs the whole run).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from medlvr.corpus.catalog import DatasetSpec
from medlvr.corpus.ingest import (OBJECT_LOST, OBJECT_WRITTEN, IngestConfig, RecordResult, account_objects,
                                   iter_discover, process_record, reason_key, with_slice_options)
from medlvr.corpus.records import Reject, relative_reason, unmapped_label_of
from medlvr.corpus.tables import escape_undecodable

EXAMPLES = 3  # file names shown per group of untaken files
_COMPANIONS = {".mhd": (".raw", ".zraw"), ".hdr": (".img",)}  # a header's data file, read with it


def label_is_known(spec: DatasetSpec, label: str) -> bool:
    """A label the catalog maps or deliberately ignores (`ignored_labels`: label -> reason)."""
    return spec.concept(label) is not None or spec.ignored(label) is not None


@dataclass
class DatasetCheck:
    dataset: str
    globs: dict[str, int] = field(default_factory=dict)  # layout glob -> files it matches
    untaken: dict[str, list[str]] = field(default_factory=dict)  # "<folder>/*<ext>" -> file names
    unknown_labels: Counter = field(default_factory=Counter)  # label -> objects
    records: int = 0
    records_rejected: Counter = field(default_factory=Counter)  # reason kind -> records
    objects: Counter = field(default_factory=Counter)  # outcome ("written", reason kind, lost) -> objects
    lost_examples: list[str] = field(default_factory=list)
    checked_all: bool = True

    @property
    def problems(self) -> int:
        return (sum(n == 0 for n in self.globs.values()) + len(self.unknown_labels) + len(self.records_rejected)
                + (self.objects.get(OBJECT_LOST, 0) > 0))

    def lines(self) -> list[str]:
        """One line per fact; problems (what makes a dataset lose objects) start with '!'."""
        d, out = self.dataset, []
        for g, n in self.globs.items():
            out.append(f"{'! ' if n == 0 else ''}{d}: layout glob {g!r} matches {n} file(s)")
        for group, names in sorted(self.untaken.items()):
            out.append(f"{d}: {len(names)} file(s) {group} that no layout glob, catalog option or record takes, "
                       f"e.g. {', '.join(names[:EXAMPLES])}")
        for label, n in self.unknown_labels.most_common():
            out.append(f"! {d}: label {label!r} on {n} object(s) is neither mapped nor ignored by the catalog")
        for why, n in self.records_rejected.most_common():
            out.append(f"! {d}: {n} record(s) would be rejected: {why}")
        found = sum(self.objects.values())
        written, lost = self.objects.get(OBJECT_WRITTEN, 0), self.objects.get(OBJECT_LOST, 0)
        out.append(f"{d}: {self.records} record(s){'' if self.checked_all else ' checked (not all)'}, {found} "
                   f"annotation object(s): {written} written as boxes, {found - written - lost} rejected, "
                   f"{lost} lost")
        for why, n in self.objects.most_common():
            if why not in (OBJECT_WRITTEN, OBJECT_LOST):
                out.append(f"{d}: {n} object(s) rejected: {why}")
        if lost:
            out.append(f"! {d}: {lost} object(s) would end with neither a box nor a reject row (a bug), e.g. "
                       f"{self.lost_examples[0] if self.lost_examples else '?'}")
        out.append(f"{d}: {'would lose objects' if self.problems else 'ok'}")
        return out


def _option_paths(value: Any) -> Iterable[str]:
    """Every string in the catalog options (file names, globs, folders): the files they name are taken."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _option_paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _option_paths(v)


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        out += [(rel / n).as_posix() for n in filenames if not n.startswith(".")]
    return sorted(out)


def _glob_set(root: Path, pattern: str) -> set[str]:
    """Files under root a catalog string names as a glob; a string that is no relative glob (empty, ".",
    absolute, leaving the root, a regex) names nothing."""
    parts = PurePosixPath(pattern.strip()).parts
    if not parts or pattern.strip() in (".", "./") or pattern.startswith("/") or ".." in parts:
        return set()
    try:
        return {p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file()}
    except (ValueError, NotImplementedError, IndexError, OSError):
        return set()


def check_dataset(spec: DatasetSpec, root: Path, cfg: IngestConfig = IngestConfig(),
                  max_records: int | None = None) -> DatasetCheck:
    """Everything `medlvr catalog check` says about one dataset folder; reads, writes nothing."""
    root = Path(root)
    spec = with_slice_options(spec, cfg)
    chk = DatasetCheck(spec.id)
    files = _files(root)
    taken: set[str] = set()
    for g in spec.layout:
        hit = _glob_set(root, g)
        chk.globs[g] = len(hit)
        taken |= hit
    for value in _option_paths(spec.options):
        if "/" in value or "*" in value or "." in value:
            taken |= _glob_set(root, value)
    discover_rejects: list[Reject] = []
    refs = iter_discover(spec, root, discover_rejects)
    if max_records is not None:
        refs = islice(refs, max_records)
    for ref in refs:
        chk.records += 1
        for rel in ref.paths.values():
            taken.add(rel)
            taken |= {f for f in files if f.startswith(rel.rstrip("/") + "/")}  # a series folder
        res = process_record(spec, root, ref, cfg, "check")
        _tally(chk, spec, res, root)
    chk.checked_all = max_records is None or chk.records < max_records
    for r in discover_rejects:
        chk.records += 1
        chk.records_rejected[reason_key(r.stage, relative_reason(r.reason, root))] += 1
    for f in list(taken):  # the data files of headers taken (MetaImage .raw, Analyze/NIfTI pair .img)
        p = PurePosixPath(f)
        for ext in _COMPANIONS.get(p.suffix.lower(), ()):
            taken.add(p.with_suffix(ext).as_posix())
    groups: dict[str, list[str]] = {}
    for f in files:
        if f in taken:
            continue
        p = PurePosixPath(f)
        # one line per kind of file: folders with a number in their name (cases, patients) folded into '*'
        where = "/".join("*" if any(ch.isdigit() for ch in part) else part for part in p.parent.parts)
        groups.setdefault(f"*{p.suffix.lower() or '(no extension)'} in {where or '.'}/",
                          []).append(escape_undecodable(p.name))
    chk.untaken = groups
    return chk


def _tally(chk: DatasetCheck, spec: DatasetSpec, res: RecordResult, root: Path) -> None:
    written = {roi["source_object"] for rois in res.rois for roi in rois}
    account_objects(res, written, chk.objects, chk.lost_examples, root)
    for level, stage, reason, _, oid in res.rejects:
        label = unmapped_label_of(reason) if level == "roi" else None
        if label is not None and not label_is_known(spec, label):
            chk.unknown_labels[label] += 1
    if res.record_reject is not None or not res.images:
        stage, reason = res.record_reject or ("load", "record produced no images")
        chk.records_rejected[reason_key(stage, relative_reason(reason, root))] += 1
