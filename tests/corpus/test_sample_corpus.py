"""`build_sample_corpus`: the bundled sample datasets as a built corpus, reused when already built."""

import pyarrow.parquet as pq

from medlvr.corpus.sample_corpus import SAMPLE_DATASETS, build_sample_corpus
from medlvr.corpus.shards import QA_SCHEMA


def test_builds_shards_of_every_dataset_once(tmp_path):
    corpus = build_sample_corpus(tmp_path / "s")
    assert corpus == tmp_path / "s" / "corpus"
    files = sorted((corpus / "shards").rglob("*.parquet"))
    assert files and all(pq.read_schema(f).equals(QA_SCHEMA, check_metadata=False) for f in files)
    datasets = {d for f in files for d in pq.read_table(f, columns=["dataset"]).column("dataset").to_pylist()}
    assert datasets == set(SAMPLE_DATASETS)
    assert sorted((tmp_path / "s" / "data").iterdir())  # the sample data it was built from
    stamps = {f: f.stat().st_mtime_ns for f in files}
    assert build_sample_corpus(tmp_path / "s") == corpus  # second call: reused, not rebuilt
    assert {f: f.stat().st_mtime_ns for f in sorted((corpus / "shards").rglob("*.parquet"))} == stamps
