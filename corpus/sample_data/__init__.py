"""Miniature copies of every catalog dataset in its native layout and format, with known true boxes.

`write_samples(out_dir)` writes `out_dir/<dataset_id>/...` exactly as the real dataset is laid out, and
`out_dir/_truth/<dataset_id>.json`: the true boxes in original pixel coordinates, outside the dataset roots,
so that tests can assert exact box recovery per adapter. Writers live in the modules of this package, one
per format family, each exposing WRITERS = {dataset_id: writer(root: Path, rng) -> list[truth dict]}.

A truth dict: {"source_path": str, "suffix": str | None (None = any image of that source),
               "boxes": [[label, [x0, y0, x1, y1]], ...]}   (labels as the catalog's raw labels)
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

_MODULES = ("volumes", "dicom_sets", "boxes", "masks2d")


def writers() -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    for name in _MODULES:
        mod = importlib.import_module(f"medlvr.corpus.sample_data.{name}")
        for k, fn in mod.WRITERS.items():
            if k in out:
                raise ValueError(f"two sample writers for {k}")
            out[k] = fn
    return out


def write_samples(out_dir: Path, datasets: list[str] | None = None, seed: int = 0) -> dict[str, int]:
    """Write the sample datasets; returns {dataset_id: number of truth records}."""
    from medlvr.corpus.catalog import load_catalog

    out_dir = Path(out_dir)
    cat = load_catalog()
    ws = writers()
    ids = datasets or list(cat)
    missing = [i for i in ids if i not in ws]
    if missing:
        raise KeyError(f"no sample writer for {missing}")
    (out_dir / "_truth").mkdir(parents=True, exist_ok=True)
    counts = {}
    for ds_id in ids:
        # seeded by the dataset id, so a dataset's sample is the same whether written alone or with the others
        rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(ds_id.encode()).digest()[:8], "big")])
        root = out_dir / ds_id
        root.mkdir(parents=True, exist_ok=True)
        truth = ws[ds_id](root, rng)
        (out_dir / "_truth" / f"{ds_id}.json").write_text(json.dumps(truth, indent=1))
        counts[ds_id] = len(truth)
    return counts


def load_truth(out_dir: Path, dataset_id: str) -> list[dict]:
    return json.loads((Path(out_dir) / "_truth" / f"{dataset_id}.json").read_text())
