"""Miniature copies of every catalog dataset in its native layout and format, with known true boxes.

`write_samples(out_dir)` writes `out_dir/<dataset_id>/...` exactly as the real dataset is laid out (plus the
marker file `medlvr.corpus.provenance.SAMPLE_MARKER` in each dataset folder: the build says the data is synthetic), and
`out_dir/_truth/<dataset_id>.json`: the true boxes in original pixel coordinates, outside the dataset roots,
so that tests can assert exact box recovery per adapter.

Writers are registered by dataset id: `register_sample_writers({dataset_id: writer(root: Path, rng) -> list[truth
dict]})` (or `@register_sample_writer(dataset_id)` on one function). The modules of this package register theirs
on import (one module per format family; `writers()` imports them all, no list to extend), so a new dataset is its
catalog YAML plus one writer in any module here.

A truth dict: {"source_path": str, "suffix": str | None (None = any image of that source),
               "boxes": [[label, [x0, y0, x1, y1]], ...]}   (labels as the catalog's raw labels)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from medlvr.corpus.catalog import CatalogError, load_catalog, select
from medlvr.corpus.config import did_you_mean
from medlvr.corpus.discovery import import_package_modules
from medlvr.corpus.provenance import write_sample_marker

SampleWriter = Callable[..., list]  # writer(root: Path, rng: numpy Generator) -> list of truth dicts
SAMPLE_WRITERS: dict[str, SampleWriter] = {}


def register_sample_writers(table: dict[str, SampleWriter]) -> dict[str, SampleWriter]:
    """Register {dataset_id: writer}; returns the table (modules keep it as WRITERS)."""
    for ds_id, fn in table.items():
        if ds_id in SAMPLE_WRITERS and SAMPLE_WRITERS[ds_id] is not fn:
            raise ValueError(f"two sample writers for {ds_id}")
        SAMPLE_WRITERS[ds_id] = fn
    return table


def register_sample_writer(dataset_id: str):
    """Decorator: register one writer for `dataset_id`."""
    def deco(fn: SampleWriter) -> SampleWriter:
        register_sample_writers({dataset_id: fn})
        return fn

    return deco


def writers() -> dict[str, SampleWriter]:
    """{dataset_id: writer} over every module of this package (imported first) and any registered elsewhere."""
    import_package_modules(__name__)
    return dict(SAMPLE_WRITERS)


SCALES = ("miniature", "real")


def write_samples(out_dir: Path, datasets: list[str] | None = None, seed: int = 0,
                  scale: str = "miniature") -> dict[str, int]:
    """Write the sample datasets; returns {dataset_id: number of truth records}. `scale="real"`: every image and
    volume file at the catalog's `real_size` (sample_data.real_scale), each dataset renamed into place once whole."""
    if scale not in SCALES:
        raise CatalogError(f"unknown scale {scale!r}{did_you_mean(scale, SCALES)}")
    out_dir = Path(out_dir)
    cat = load_catalog()
    ws = writers()
    ids = [s.id for s in select(datasets, cat)]  # an unknown id: one line with a did-you-mean
    missing = [i for i in ids if i not in ws]
    if missing:
        raise CatalogError(f"no sample writer for {missing} (have {sorted(ws)})")
    (out_dir / "_truth").mkdir(parents=True, exist_ok=True)
    counts = {}
    for ds_id in ids:
        # seeded by the dataset id, so a dataset's sample is the same whether written alone or with the others
        rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(ds_id.encode()).digest()[:8], "big")])
        root = out_dir / ds_id if scale == "miniature" else out_dir / f".{ds_id}.partial"
        if scale == "real":
            shutil.rmtree(root, ignore_errors=True)  # a partial folder of an interrupted run
        root.mkdir(parents=True, exist_ok=True)
        truth = ws[ds_id](root, rng)
        write_sample_marker(root, ds_id, seed)  # the build then knows this folder is synthetic (corpus/provenance.py)
        if scale == "real":
            from medlvr.corpus.sample_data.real_scale import grow_dataset, zoom_truth

            truth = zoom_truth(truth, grow_dataset(root, cat[ds_id]))
            shutil.rmtree(out_dir / ds_id, ignore_errors=True)
            os.replace(root, out_dir / ds_id)
        (out_dir / "_truth" / f"{ds_id}.json").write_text(json.dumps(truth, indent=1))
        counts[ds_id] = len(truth)
    return counts


def load_truth(out_dir: Path, dataset_id: str) -> list[dict]:
    return json.loads((Path(out_dir) / "_truth" / f"{dataset_id}.json").read_text())
