import json

from medlvr.pipelines.cli import main


def test_catalog_json_lists_31(capsys):
    assert main(["catalog", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 31 and {"id", "modality", "adapter", "layout", "licence"} <= set(rows[0])


def test_catalog_table(capsys):
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert "31 datasets, 8 modalities" in out and "kits23" in out


def test_sample_data_then_ingest_prints_summary(tmp_path, capsys):
    ids = ["busi", "deeplesion", "bccd"]
    assert main(["sample-data", str(tmp_path / "data"), "--datasets", *ids]) == 0
    assert main(["ingest", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--datasets", *ids, "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    for i in ids:
        assert i in out and (tmp_path / "out" / i / "images.parquet").exists()
    assert "total" in out


def test_unknown_dataset_and_missing_root_are_errors(tmp_path, capsys):
    assert main(["ingest", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--datasets", "nope"]) == 2
    assert "unknown dataset ids ['nope']" in capsys.readouterr().err
    assert main(["ingest", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "--datasets", "busi"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_config_file_is_honoured(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text("normalise: {max_side: 32}\nworkers: 1\n")
    main(["sample-data", str(tmp_path / "data"), "--datasets", "busi"])
    assert main(["ingest", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--datasets",
                 "busi", "--config", str(tmp_path / "cfg.yaml"), "--quiet"]) == 0
    import pyarrow.parquet as pq

    widths = pq.read_table(tmp_path / "out" / "busi" / "images.parquet", columns=["width", "height"]).to_pylist()
    assert all(max(r["width"], r["height"]) <= 32 for r in widths)


def test_set_overrides_and_unknown_config_keys(tmp_path, capsys):
    main(["sample-data", str(tmp_path / "data"), "--datasets", "busi"])
    assert main(["ingest", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--datasets",
                 "busi", "--set", "normalise.max_side=24", "--quiet"]) == 0
    import pyarrow.parquet as pq

    widths = pq.read_table(tmp_path / "out" / "busi" / "images.parquet", columns=["width", "height"]).to_pylist()
    assert all(max(r["width"], r["height"]) <= 24 for r in widths)
    (tmp_path / "bad.yaml").write_text("normalise: {max_sid: 32}\n")  # a typo: an error, not silently ignored
    assert main(["ingest", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o2"), "--datasets",
                 "busi", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown config key normalise.max_sid (did you mean normalise.max_side?)" in capsys.readouterr().err
    assert main(["build-corpus", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o3"),
                 "--set", "generator.backnd=openai"]) == 2
    assert "generator.backnd" in capsys.readouterr().err
