"""fsspec mirroring used by CorpusStorage for remote URLs (memory:// stands in for s3://)."""

import fsspec

from medlvr.pipelines.corpus.resources import CorpusStorage
from medlvr.pipelines.corpus.storage import pull, push


def test_push_pull_mirror(tmp_path):
    fs, root = fsspec.core.url_to_fs(f"memory://sync-{tmp_path.name}")
    a = tmp_path / "a"
    (a / "shards" / "train").mkdir(parents=True)
    (a / "shards" / "train" / "part-0.parquet").write_bytes(b"one")
    (a / "shards" / "_manifest.json").write_text("{}")
    (a / ".shards.tmp-1234").mkdir()
    (a / ".shards.tmp-1234" / "x").write_text("half written")
    assert push(fs, root, a, ["shards"])[-1] == "shards/_manifest.json"  # manifest last
    assert not fs.exists(f"{root}/.shards.tmp-1234/x")
    b = tmp_path / "b"
    assert sorted(pull(fs, root, b, ["shards"])) == ["shards/_manifest.json", "shards/train/part-0.parquet"]
    assert pull(fs, root, b, ["shards"]) == []  # unchanged: nothing downloaded again
    # a rebuilt shard set replaces the old one on both sides
    (a / "shards" / "train" / "part-0.parquet").unlink()
    (a / "shards" / "train" / "part-1.parquet").write_bytes(b"two")
    push(fs, root, a, ["shards"])
    assert not fs.exists(f"{root}/shards/train/part-0.parquet")
    assert "shards/train/part-1.parquet" in pull(fs, root, b, ["shards"])
    assert not (b / "shards" / "train" / "part-0.parquet").exists()
    assert pull(fs, root, b, ["missing/folder"]) == []


def test_corpus_storage_local_and_remote(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLVR_HOME", str(tmp_path / "home"))
    local = CorpusStorage()
    assert not local.remote and local.location() == str(tmp_path / "home" / "corpus")
    with local.workdir() as out:
        assert out == tmp_path / "home" / "corpus" and out.is_dir()
    remote = CorpusStorage(url=f"memory://cs-{tmp_path.name}/corpus")
    assert remote.remote
    with remote.workdir(push_paths=["kg"]) as out:
        assert out.is_relative_to(tmp_path / "home" / "staging")
        (out / "kg").mkdir()
        (out / "kg" / "stats.json").write_text("{}")
    fs, root = fsspec.core.url_to_fs(remote.location())
    assert fs.cat_file(f"{root}/kg/stats.json") == b"{}"
