"""The synthetic grounding task (corpus/sample_data/synthetic_grounding.py) as a benchmark: the main job trains the
tiny models on its train split and evaluates them on its test split, so its report shows whether they learned
(chance 25 %). Not a paper benchmark: in-domain (not Table 2), not in the efficiency subset, last in the tables.

Layout under its folder: what `write_grounding_task` writes; the loader reads `prompts_<split>.jsonl` (image paths
relative to the folder) and carries the lesion box as the sample's ROI (`tags["roi"]`), so the report's latent and
attention diagnostics can compare where the model looks with where the answer is. VLPO reads the same prompts
(`data.source=synthetic_grounding`). Sample id: the item id ("sg-<seed>-<split>-<n>").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from medlvr.corpus.evalsets.base import BenchmarkError, Sample, file_uri
from medlvr.corpus.evalsets.registry import register_benchmark
from medlvr.corpus.sample_data.synthetic_grounding import DATASET, LETTERS, write_grounding_task

NAME = DATASET
SAMPLE_TEST_ITEMS = 16  # the bundled sample (tests, eval_sample.yaml); the main job writes its own, larger split


def load_grounding_task(root: str | Path, split: str = "train", limit: int | None = None) -> list[Sample]:
    """The task's multiple-choice prompts of one split as Samples, in written order (what VLPO trains on)."""
    path = Path(root) / f"prompts_{split}.jsonl"
    if not path.is_file():
        raise BenchmarkError(f"synthetic grounding task: {path} not found (write it with write_grounding_task)")
    out = []
    for line in path.read_text().splitlines()[:limit]:
        r = json.loads(line)
        tags = {"modality": "synthetic", "split": split}
        if r.get("box"):
            tags["roi"] = r["box"]
        out.append(Sample(benchmark=DATASET, sample_id=r["id"], question=r["question"], kind="mc", answer=r["answer"],
                          options=tuple(zip(LETTERS, r["options"])), images=(file_uri(Path(root) / r["image"]),),
                          tags=tags))
    return out


def load_synthetic_grounding(root: str | Path, split: str = "test") -> Iterator[Sample]:
    yield from load_grounding_task(root, split)


def write_sample(root: Path) -> int:
    """The held-out split only: training data is written by whoever trains (the main job writes its own)."""
    write_grounding_task(root, n_train=0, n_test=SAMPLE_TEST_ITEMS, seed=0)
    return SAMPLE_TEST_ITEMS


register_benchmark(NAME, load_synthetic_grounding, sample_writers={NAME: write_sample}, external=False, rank=60)
