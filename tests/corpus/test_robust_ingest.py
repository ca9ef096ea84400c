"""Issue 15 (1): one bad dataset or one bad file name never stops a run."""

import dataclasses
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from medlvr.corpus.adapters import ADAPTERS, Adapter
from medlvr.corpus import ingest as ingest_mod
from medlvr.corpus.catalog import load_catalog, parse_spec
from medlvr.corpus.ingest import IngestConfig, ingest_dataset
from medlvr.corpus.records import RecordRef, SourceImage
from medlvr.pipelines.cli import main

IDS = ["busi", "deeplesion", "bccd"]


def _crash_for(monkeypatch, dataset_id: str, part: str):
    """Make the adapter of `dataset_id` raise in `part` (discover or load) for that dataset only."""
    adapter = ADAPTERS[load_catalog()[dataset_id].adapter]
    real = getattr(adapter, part)

    def boom(spec, *args):
        if spec.id == dataset_id:
            raise KeyError("secret-patient-id 12345")  # a message with a value that must not reach the log
        return real(spec, *args)

    monkeypatch.setitem(ADAPTERS, adapter.name, dataclasses.replace(adapter, **{part: boom}))


@pytest.mark.parametrize("crash", ["discover", "memory"])
def test_a_dataset_that_raises_fails_alone(tmp_path, monkeypatch, capsys, crash):
    assert main(["sample-data", str(tmp_path / "data"), "--datasets", *IDS]) == 0
    capsys.readouterr()
    if crash == "memory":  # process_record re-raises MemoryError: the dataset dies, not the run
        real = ingest_mod.process_record

        def process(spec, *args):
            if spec.id == "deeplesion":
                raise MemoryError()
            return real(spec, *args)

        monkeypatch.setattr(ingest_mod, "process_record", process)
    else:
        _crash_for(monkeypatch, "deeplesion", crash)
    rc = main(["ingest", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
               "--datasets", *IDS, "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("medlvr: error: deeplesion: failed: ")
    assert "secret" not in err[0] and "12345" not in err[0] and str(tmp_path) not in err[0]
    assert not (tmp_path / "out" / "deeplesion").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]  # the half-written folder is gone
    for ds in ("busi", "bccd"):  # the others are complete: every record reconciled and published
        summary = json.loads((tmp_path / "out" / ds / "summary.json").read_text())
        images = pq.read_table(tmp_path / "out" / ds / "images.parquet").num_rows
        assert summary["records_out"] > 0 and images == summary["images_out"]


def test_build_corpus_isolates_a_failing_dataset(tmp_path, monkeypatch, capsys):
    assert main(["sample-data", str(tmp_path / "data"), "--datasets", *IDS]) == 0
    _crash_for(monkeypatch, "bccd", "discover")
    rc = main(["build-corpus", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
               "--datasets", *IDS, "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medlvr: error")]
    assert rc == 1 and len(err) == 1 and err[0].startswith("medlvr: error: bccd: failed: KeyError at tests/corpus/test_robust_ingest.py:")
    for ds in ("busi", "deeplesion"):
        assert (tmp_path / "out" / "qa" / ds / "pairs.parquet").exists()


# ---- a file name that is not valid UTF-8 ----

SPEC = parse_spec({
    "id": "bytesnames", "name": "Bytes", "modality": "CT", "body_region": "abdomen", "adapter": "walk_adapter",
    "labels": {"lesion": "kg:lesion"}, "layout": ["*"], "patient_key": {"source": "image"},
    "licence": "none", "citation": "none", "homepage": "none",
})


def _walk(spec, root):
    for name in sorted(os.listdir(root)):  # str names: undecodable bytes arrive as lone surrogates (PEP 383)
        yield RecordRef(name, {"image": name})


def _load(spec, root, ref):
    data = (root / ref.paths["image"]).read_bytes()
    px = np.frombuffer(data, np.uint8).reshape(8, 8)
    return [SourceImage(source_path=ref.paths["image"], pixels=px, intensity="uint8")]


@pytest.fixture
def walk_adapter(monkeypatch):
    monkeypatch.setitem(ADAPTERS, "walk_adapter", Adapter("walk_adapter", _walk, _load, "test"))


def test_non_utf8_file_name_is_published_escaped(tmp_path, walk_adapter):
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [b"case_\xff\xfe.raw", b"plain.raw"]
    for name in names:
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(rng.integers(0, 255, 64, dtype=np.uint8).tobytes())
    s = ingest_dataset(SPEC, root, tmp_path / "out", IngestConfig(patient_salt="s"))
    assert (s.records_in, s.records_out, s.records_rejected) == (2, 2, 0)
    rows = pq.read_table(tmp_path / "out" / "bytesnames" / "images.parquet").to_pylist()
    assert sorted(r["source_path"] for r in rows) == ["case_\\xff\\xfe.raw", "plain.raw"]
    assert sorted(r["record_key"] for r in rows) == ["case_\\xff\\xfe.raw", "plain.raw"]


def test_escape_undecodable_leaves_valid_text_alone():
    from medlvr.corpus.tables import escape_undecodable

    assert escape_undecodable("héllo/ü.png") == "héllo/ü.png"
    assert escape_undecodable(os.fsdecode(b"a/\xc3(.png")) == "a/\\xc3(.png"
