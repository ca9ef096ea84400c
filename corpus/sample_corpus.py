"""A small ready-built corpus from the bundled sample datasets (offline, a few seconds): what `medlvr sample-data`
followed by `medlvr build-corpus` gives, as one call, for tests, benchmarks and demos that need shards."""

from __future__ import annotations

from pathlib import Path

from medlvr.corpus.build import BuildConfig, build_corpus
from medlvr.corpus.sample_data import write_samples

# three datasets of different formats (ultrasound masks, chest X-ray boxes, fundus masks): enough rows for a few
# training micro-batches
SAMPLE_DATASETS = ("busi", "vindr_cxr", "refuge")


def build_sample_corpus(out: str | Path, datasets: tuple[str, ...] = SAMPLE_DATASETS) -> Path:
    """Write the sample data of `datasets` to `out/data` and build the corpus in `out/corpus` (reused when its
    shards already exist); returns the corpus folder."""
    out = Path(out)
    if not (out / "corpus" / "shards").is_dir():
        write_samples(out / "data", list(datasets))
        build_corpus(out / "data", out / "corpus", BuildConfig(), list(datasets), progress=False, log=lambda *_: None)
    return out / "corpus"
