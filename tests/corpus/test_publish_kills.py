"""Issue 15 (5): publishing a folder (`ingest/<id>`, `shards/`) survives a kill at any instant.

Kills are injected at exact points, never by timing: in a child process, `os._exit` replaces the n-th call of
os.replace / the renameat2 exchange / shutil.rmtree; in this process, a BaseException subclass is raised there.
After every kill the published folder exists and is one complete version, and the next writer start restores a
missing one from its `.old-*` copy and removes the leftovers (only ours: exact names, dead owners).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medlvr.corpus import tables
from medlvr.corpus.shards import ShardWriter, verify_manifest
from medlvr.corpus.tables import DatasetWriter, recover_published


class Killed(BaseException):
    """Stands for kill -9: not an Exception, so no `except Exception` cleanup runs."""


def _publish(out: Path, version: int) -> Path:
    w = DatasetWriter(out, "busi")
    return w.commit({"version": version})


def _version(out: Path) -> int:
    return json.loads((out / "busi" / "summary.json").read_text())["version"]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


CHILD = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from medlvr.corpus import tables
    from medlvr.corpus.tables import DatasetWriter

    out, target, nth, fallback = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    if fallback:  # a file system without RENAME_EXCHANGE: the two-rename path
        tables._exchange = lambda a, b: False
    calls = [0]
    real = {"replace": os.replace, "rmtree": shutil.rmtree, "exchange": tables._exchange}[target]

    def dying(*args, **kw):
        calls[0] += 1
        if calls[0] == nth:
            os._exit(9)  # the process is gone between this call and the next: nothing after it runs
        return real(*args, **kw)

    if target == "replace":
        os.replace = dying
    elif target == "rmtree":
        tables.shutil.rmtree = dying
    else:
        tables._exchange = dying
    DatasetWriter(out, "busi").commit({"version": 2})
    print("survived")
""")


def _kill_child(out: Path, target: str, nth: int, fallback: bool) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", CHILD, str(out), target, str(nth), "1" if fallback else "0"],
                          env=env, capture_output=True, text=True, timeout=120).returncode


@pytest.mark.parametrize("target,nth,fallback", [
    ("exchange", 1, False),  # before the swap
    ("rmtree", 1, False),  # after the swap, before the old version is removed
    ("replace", 1, True),  # fallback: before final -> .old-*
    ("replace", 2, True),  # fallback: between the two renames (final is missing)
    ("rmtree", 1, True),  # fallback: after both renames
])
def test_kill_at_each_point_then_next_start_recovers(tmp_path, target, nth, fallback):
    out = tmp_path / "out"
    _publish(out, 1)
    assert _kill_child(out, target, nth, fallback) == 9
    if not (target == "replace" and nth == 2):  # with the exchange, `busi` is never missing
        assert _version(out) in (1, 2)
    assert _leftovers(out)  # the kill left something behind
    # the next run's writer start: `busi` restored if it was missing, every leftover of the dead child removed
    w = DatasetWriter(out, "busi")
    assert _version(out) in (1, 2)
    assert _leftovers(out) == [w.tmp.name]
    w.commit({"version": 3})
    assert _version(out) == 3 and _leftovers(out) == []


def test_exchange_is_one_step_where_the_os_allows(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _publish(out, 1)
    renames = []
    real = os.replace
    monkeypatch.setattr(tables.os, "replace", lambda a, b: (renames.append((a, b)), real(a, b))[1])
    _publish(out, 2)
    assert _version(out) == 2 and _leftovers(out) == []
    assert renames == []  # no window where `busi` is missing: one renameat2(RENAME_EXCHANGE), no rename pair


def test_in_process_kill_between_the_renames_is_restored(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _publish(out, 1)
    monkeypatch.setattr(tables, "_exchange", lambda a, b: False, raising=False)
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise Killed
        return real(a, b)

    monkeypatch.setattr(tables.os, "replace", replace)
    with pytest.raises(Killed):
        _publish(out, 2)
    monkeypatch.setattr(tables.os, "replace", real)
    assert not (out / "busi").exists() and any(".busi.old-" in n for n in _leftovers(out))
    # the next run (any pid may be ours: in-process leftovers of a dead publish count as dead)
    assert recover_published(out / "busi")[0].startswith("restored busi from .busi.old-")
    assert _version(out) == 1 and _leftovers(out) == []


def test_only_our_dead_leftovers_are_removed(tmp_path):
    out = tmp_path / "out"
    _publish(out, 1)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [f".busi.tmp-{live.pid}-0123abcd",  # another live writer's folder
                ".busi.tmp-1234",  # not our naming
                ".busi2.tmp-1-0123abcd",  # another dataset's
                ".busi.tmp-1-0123abcdX",  # not exactly our naming
                "notes.old-1-0123abcd"]
        for name in keep:
            (out / name).mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        (out / f".busi.tmp-{dead}-0123abcd").mkdir()
        (out / f".busi.old-{dead}-89abcdef").mkdir()
        done = recover_published(out / "busi")
        assert sorted(done) == [f"removed .busi.old-{dead}-89abcdef", f"removed .busi.tmp-{dead}-0123abcd"]
        assert all((out / name).is_dir() for name in keep)
    finally:
        live.kill()
        live.wait()


def _shard_row(i: int) -> dict:
    return {"qa_id": f"q{i}", "image_id": "i", "dataset": "busi", "modality": "us", "split": "train",
            "question_type": "t", "question": "q?", "answer": "a", "options": None, "answer_index": None,
            "boxes": None, "answer_is_box": False, "concept_ids": None, "knowledge_only": False, "caption": None,
            "text_source": "template", "patient_key": "p", "dup_group": "g", "width": 1, "height": 1,
            "image": b"png"}


def test_shards_killed_after_the_swap_stay_valid_and_are_cleaned(tmp_path, monkeypatch):
    for version in (1, 2):
        w = ShardWriter(tmp_path)
        for i in range(version):
            w.add(_shard_row(i))
        if version == 2:
            monkeypatch.setattr(tables.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(Killed()))
            with pytest.raises(Killed):
                w.commit({})
            monkeypatch.undo()
        else:
            w.commit({})
    assert verify_manifest(tmp_path / "shards") == []
    assert json.loads((tmp_path / "shards" / "_manifest.json").read_text())["rows"] == 2
    assert any(n.startswith(".shards.tmp-") for n in _leftovers(tmp_path))
    ShardWriter(tmp_path).abort()  # the next build's writer start removes the dead leftover
    assert _leftovers(tmp_path) == []
