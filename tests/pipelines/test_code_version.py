"""Code versions come from the installed package's files (importlib), not from a source checkout."""

import importlib
import os
import sys
import zipfile
from importlib.metadata import version

from medlvr.pipelines.code_version import folder_fingerprint, package_code_version


def test_code_version_follows_the_package_source(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "cv_pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "step.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    before = package_code_version("cv_pkg")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"noise")  # compiled files do not count
    package_code_version.cache_clear()
    assert package_code_version("cv_pkg") == before
    (pkg / "sub" / "step.py").write_text("def f():\n    return 2\n")
    package_code_version.cache_clear()
    assert package_code_version("cv_pkg") != before
    sys.modules.pop("cv_pkg", None)


def test_code_version_of_a_zipped_package_is_the_distribution_version(tmp_path, monkeypatch):
    archive = tmp_path / "z.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("cv_zipped/__init__.py", "")
    monkeypatch.syspath_prepend(str(archive))
    importlib.invalidate_caches()
    package_code_version.cache_clear()
    expected = package_code_version("cv_zipped")
    monkeypatch.setattr("importlib.metadata.version", lambda name: version(name) + "+other")
    package_code_version.cache_clear()
    assert package_code_version("cv_zipped") != expected  # follows the installed version, nothing else
    sys.modules.pop("cv_zipped", None)


def test_folder_fingerprint_sees_a_touched_file(tmp_path):
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "x.png"
    f.write_bytes(b"1")
    before = folder_fingerprint(tmp_path)
    assert folder_fingerprint(tmp_path) == before
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert folder_fingerprint(tmp_path) != before
