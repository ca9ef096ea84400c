import json

from medlvr.pipelines.cli import main
from tests.catalog_count import N_DATASETS, N_MODALITIES


def test_catalog_json_lists_every_catalog_dataset(capsys):
    assert main(["catalog", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == N_DATASETS
    assert {"id", "modality", "adapter", "layout", "licence", "ignored_labels"} <= set(rows[0])
    fastmri = next(r for r in rows if r["id"] == "fastmri_plus")
    assert fastmri["ignored_labels"]["Possible artifact"].startswith("an image artifact")


def test_catalog_table(capsys):
    assert main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert f"{N_DATASETS} datasets, {N_MODALITIES} modalities" in out and "kits23" in out


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
    assert "unknown dataset id 'nope'" in capsys.readouterr().err
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


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_missing_or_partial_data_root_is_one_line(tmp_path, capsys):
    for cmd in ("ingest", "build-corpus"):
        assert main([cmd, "--data-root", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "o")]) == 1
        assert _err_lines(capsys) == [f"medlvr: error: data root {tmp_path / 'nonexistent'} does not exist"]
    (tmp_path / "empty").mkdir()
    assert main(["ingest", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert len(err := _err_lines(capsys)) == 1 and "holds no dataset folder" in err[0]
    main(["sample-data", str(tmp_path / "data"), "--datasets", "busi"])
    capsys.readouterr()
    assert main(["ingest", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "o")]) == 0
    err = _err_lines(capsys)
    assert len(err) == 1
    assert err[0].startswith(f"skipped {N_DATASETS - 1} datasets not under {tmp_path / 'data'}: acdc, adam,")


def test_named_but_absent_dataset_is_an_error_before_any_work(tmp_path, capsys):
    main(["sample-data", str(tmp_path / "data"), "--datasets", "busi"])
    capsys.readouterr()
    for cmd in ("ingest", "build-corpus"):
        assert main([cmd, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / cmd), "--datasets", "busi",
                     "bccd", "kits23"]) == 1
        err = _err_lines(capsys)
        assert [e.split(":")[1] for e in err] == [" error", " error"] and "dataset bccd" in err[0] and "skipped" not in err[0]
        assert "dataset kits23" in err[1] and not (tmp_path / cmd).exists()  # nothing ran


def test_dataset_that_yields_nothing_fails_the_run_with_one_line(tmp_path, capsys):
    main(["sample-data", str(tmp_path / "data"), "--datasets", "busi", "rsna_pneumonia"])
    labels = tmp_path / "data" / "rsna_pneumonia" / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text().replace(",", ";"))  # re-saved by a spreadsheet with ';' separators
    capsys.readouterr()
    for cmd in ("ingest", "build-corpus"):
        assert main([cmd, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / cmd)]) == 1
        err = [e for e in _err_lines(capsys) if not e.startswith("skipped")]
        assert len(err) == 1 and err[0].startswith("medlvr: error: rsna_pneumonia: no image came out of 1 records"), err
        assert "missing columns" in err[0] and "separated by ';'" in err[0] and "00000000-" not in err[0]
