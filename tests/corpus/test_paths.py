import os

import pytest

from medlvr.corpus.paths import require_file, safe_path, walk
from medlvr.corpus.records import RecordError


def test_safe_path_confines_to_root(tmp_path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "a" / "img.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    assert safe_path(root, "a/img.png") == root / "a" / "img.png"
    assert require_file(root, "a\\img.png").name == "img.png"
    for bad, why in [("../secret.txt", "escapes"), ("a/../../secret.txt", "escapes"), ("/etc/passwd", "absolute"),
                     ("C:/x.png", "absolute"), ("", "empty")]:
        with pytest.raises(RecordError, match=why):
            safe_path(root, bad)
    os.symlink(tmp_path / "secret.txt", root / "a" / "link.png")
    with pytest.raises(RecordError, match="outside"):
        safe_path(root, "a/link.png")
    os.symlink(tmp_path, root / "up")
    with pytest.raises(RecordError, match="outside"):
        safe_path(root, "up/secret.txt")
    with pytest.raises(RecordError, match="missing"):
        require_file(root, "a/nothere.png")


def test_walk_skips_appledouble_and_hidden(tmp_path):
    for name in ["x.nii.gz", "._x.nii.gz", ".hidden/y.nii.gz", "sub/z.nii.gz"]:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path, "**/*.nii.gz")] == ["sub/z.nii.gz", "x.nii.gz"]


def test_folder_cache_is_renewed_by_each_discovery(tmp_path):
    """safe_path caches folder realpaths within a discovery; a folder swapped for a symlink that leaves the
    root before the next discovery must be refused then."""
    from medlvr.corpus.paths import clear_path_cache

    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "a" / "img.png").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "img.png").write_bytes(b"y")
    assert safe_path(root, "a/img.png") == root / "a" / "img.png"
    os.rename(root / "a", tmp_path / "old_a")
    os.symlink(tmp_path / "outside", root / "a")
    clear_path_cache()  # what iter_discover does at the start of every dataset run
    with pytest.raises(RecordError, match="outside"):
        safe_path(root, "a/img.png")
