"""A failing rank reports itself in one line (issue 28): the launcher's summary names the first rank to exit,
often a peer that only lost its connection, so every rank of a multi-rank run prints its own error."""

from medlvr.training.pipes import ERROR_FILE, report_failure


def _fail(monkeypatch, tmp_path, capsys, rank: int, world: int):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    try:
        raise OSError("image shard part-00001.parquet is truncated\nsecond line of detail")
    except OSError as exc:
        report_failure(None, exc, tmp_path)
    return capsys.readouterr().err.splitlines()


def test_rank_one_of_two_prints_its_error_in_one_line_and_writes_no_file(monkeypatch, tmp_path, capsys):
    assert _fail(monkeypatch, tmp_path, capsys, 1, 2) == [
        "medlvr trainer: error: rank 1: OSError: image shard part-00001.parquet is truncated"]
    assert not (tmp_path / ERROR_FILE).exists()


def test_rank_zero_also_writes_the_traceback(monkeypatch, tmp_path, capsys):
    assert _fail(monkeypatch, tmp_path, capsys, 0, 2) == [
        "medlvr trainer: error: rank 0: OSError: image shard part-00001.parquet is truncated"]
    assert "second line of detail" in (tmp_path / ERROR_FILE).read_text()


def test_one_process_prints_nothing_extra(monkeypatch, tmp_path, capsys):
    """A single process's error is printed by the CLI itself; no second line."""
    assert _fail(monkeypatch, tmp_path, capsys, 0, 1) == []
