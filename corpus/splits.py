"""Patient- and duplicate-disjoint train/validation/test splits (docs/datasets.md §6.8), named as the Hugging Face
Hub names them (`validation`, not `val`).

Split units are connected components of a union-find whose nodes are images and whose edges join
  * images with the same (dataset, patient_key) — patient keys are salted per dataset at ingestion, and the
    dataset is part of the node key anyway, so keys of two datasets never collide;
  * images with the same dup_group (corpus/dedup.py: exact and near duplicates, across datasets);
  * rows with the same image_id (one image listed by two datasets or two records).
A component's id is its smallest image_id. Its split:
  * if any member has an official split, the STRICTEST official split among its members (test > validation > train);
    members whose own official split differs are "moved" and counted in the report, members without one follow;
  * otherwise a deterministic hash of (seed, component id) compared with the cumulative fractions — the
    semantics of sklearn's GroupShuffleSplit (groups never split, fractions met in expectation over groups, so
    image fractions are approximate when group sizes vary), without sklearn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from medlvr.corpus.dedup import UnionFind

SPLITS = ("train", "validation", "test")
STRICTNESS = {"train": 0, "validation": 1, "test": 2}  # on conflict the highest wins

# Official split values as the ingested tables may carry them (catalog `official_split` maps + adapter values),
# after lower-casing, stripping and turning spaces / hyphens into underscores.
OFFICIAL_SPLIT_NAMES: dict[str, str] = {
    "train": "train", "training": "train", "tr": "train", "trainval": "train", "train_val": "train",
    "trainingset": "train", "training_set": "train", "a._training_set": "train",
    "val": "validation", "valid": "validation", "validation": "validation", "validate": "validation",
    "dev": "validation", "va": "validation", "validation_set": "validation",
    "test": "test", "testing": "test", "te": "test", "testset": "test", "test_set": "test",
    "b._testing_set": "test", "testing_set": "test",
}
# Numeric codes only mean something per dataset: DeepLesion's Train_Val_Test column is 1/2/3 = train/val/test.
DATASET_SPLIT_CODES: dict[str, dict[str, str]] = {
    "deeplesion": {"1": "train", "2": "validation", "3": "test"},
}


def normalise_split(value: str | None, dataset: str) -> str | None:
    """Official split value of `dataset` -> "train" | "validation" | "test" | None (None, "" and "nan" are no split).
    An unrecognised value raises ValueError: silently treating it as "no official split" could move an official
    test image into train."""
    if value is None:
        return None
    v = str(value).strip()
    if v == "" or v.lower() in ("none", "nan", "null"):
        return None
    codes = DATASET_SPLIT_CODES.get(dataset, {})
    if v in codes:
        return codes[v]
    key = v.lower().replace(" ", "_").replace("-", "_")
    if key in OFFICIAL_SPLIT_NAMES:
        return OFFICIAL_SPLIT_NAMES[key]
    raise ValueError(f"{dataset}: unrecognised official split value {value!r}; add it to OFFICIAL_SPLIT_NAMES "
                     f"or DATASET_SPLIT_CODES")


def hash_split(component: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """Deterministic split of a component without an official split: u = sha256(seed, component) in [0, 1)."""
    digest = hashlib.sha256(f"{seed}\0{component}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    acc = 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        if u < acc:
            return name
    return SPLITS[-1]


@dataclass
class SplitReport:
    """Counts of one assignment. Image counts are over distinct image_ids."""
    images: int = 0
    components: int = 0
    largest_component: int = 0
    per_split: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> split -> rows
    official_images: int = 0  # images with an official split of their own
    official_components: int = 0  # components whose split came from an official split
    conflict_components: int = 0  # components whose members' official splits disagree
    moved: int = 0  # images placed in a split other than their own official one (strictest wins)
    moved_by_dataset: dict[str, int] = field(default_factory=dict)

    def fractions(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {s: self.per_split[s] / n for s in SPLITS}

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["fractions"] = self.fractions()
        return d


def _get(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


def assign_splits(rows: Iterable[Any], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> tuple[dict[str, str], SplitReport]:
    """rows: mappings (or objects) with image_id, dataset, patient_key, official_split, dup_group (None allowed for
    patient_key / official_split / dup_group) -> ({image_id: "train"|"validation"|"test"}, SplitReport).

    Guarantees: every image of a component gets one split, so no patient (per dataset) and no duplicate group is
    in two splits; the result depends only on the rows (not their order), the fractions and the seed."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    uf = UnionFind()
    own_split: dict[str, str | None] = {}
    image_datasets: dict[str, set[str]] = {}
    for row in rows:
        image_id, dataset = _get(row, "image_id"), _get(row, "dataset")
        patient, group = _get(row, "patient_key"), _get(row, "dup_group")
        node = ("i", image_id)
        uf.find(node)
        if patient is not None and patient != "":
            uf.union(("p", dataset, patient), node)
        if group is not None and group != "":
            uf.union(("g", group), node)
        s = normalise_split(_get(row, "official_split"), dataset)
        prev = own_split.get(image_id)
        if s is not None and (prev is None or STRICTNESS[s] > STRICTNESS[prev]):
            own_split[image_id] = s
        else:
            own_split.setdefault(image_id, prev)
        image_datasets.setdefault(image_id, set()).add(dataset)

    members: dict[Any, list[str]] = {}
    for image_id in own_split:
        members.setdefault(uf.find(("i", image_id)), []).append(image_id)

    report = SplitReport(images=len(own_split), components=len(members))
    assignment: dict[str, str] = {}
    for ids in members.values():
        comp_id = min(ids)
        report.largest_component = max(report.largest_component, len(ids))
        official = {own_split[i] for i in ids if own_split[i] is not None}
        if official:
            split = max(official, key=STRICTNESS.__getitem__)
            report.official_components += 1
            if len(official) > 1:
                report.conflict_components += 1
        else:
            split = hash_split(comp_id, seed, fractions)
        for i in ids:
            assignment[i] = split
            report.per_split[split] += 1
            if own_split[i] is not None:
                report.official_images += 1
                if own_split[i] != split:
                    report.moved += 1
                    for d in sorted(image_datasets[i]):
                        report.moved_by_dataset[d] = report.moved_by_dataset.get(d, 0) + 1
            for d in image_datasets[i]:
                per = report.per_dataset.setdefault(d, {s: 0 for s in SPLITS})
                per[split] += 1
    report.per_dataset = dict(sorted(report.per_dataset.items()))
    report.moved_by_dataset = dict(sorted(report.moved_by_dataset.items()))
    return assignment, report


def iter_split_rows(ingest_out: Path, groups: Mapping[str, str],
                    datasets: Iterable[str] | None = None, batch_size: int = 4096) -> Iterator[dict[str, Any]]:
    """Stream assign_splits rows from `<ingest_out>/<dataset>/images.parquet` (columns image_id, dataset,
    patient_key, official_split only; never the PNG bytes). `groups` is duplicate_groups' output; an image
    missing from it is its own group."""
    root = Path(ingest_out)
    if datasets is None:
        paths = sorted(p for p in root.glob("*/images.parquet") if not p.parent.name.startswith("."))
    else:
        paths = [root / d / "images.parquet" for d in sorted(set(datasets))]
    cols = ["image_id", "dataset", "patient_key", "official_split"]
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=cols):
            for row in batch.to_pylist():
                row["dup_group"] = groups.get(row["image_id"], row["image_id"])
                yield row
