"""Code versions come from the installed package's files (importlib), not from a source checkout."""

import importlib
import os
import sys
import zipfile
from importlib.metadata import version

from medlvr.pipelines.code_version import folder_fingerprint, package_code_version, quick_folder_fingerprint


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


def test_quick_folder_fingerprint_sees_structure_changes(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(600):  # more files than the sample: most are never statted
        (tmp_path / "a" / "b" / f"{i:03d}.png").write_bytes(b"1")
    seen = {quick_folder_fingerprint(tmp_path)}
    assert quick_folder_fingerprint(tmp_path) in seen  # stable while nothing changes

    def changed() -> bool:
        fp = quick_folder_fingerprint(tmp_path)
        new = fp not in seen
        seen.add(fp)
        return new

    (tmp_path / "a" / "empty").mkdir()  # a new folder
    assert changed()
    (tmp_path / "a" / "b" / "301.png").rename(tmp_path / "a" / "b" / "301b.png")  # a rename deep down
    assert changed()
    os.symlink(tmp_path / "a", tmp_path / "link")  # a link to a folder is an entry, not walked (no loop)
    assert changed()
    assert quick_folder_fingerprint(tmp_path / "missing") == quick_folder_fingerprint(tmp_path / "missing2")


def test_files_version_follows_the_shipped_default_configs(tmp_path):
    from medlvr.pipelines.code_version import files_version

    cfg = tmp_path / "sft_tiny.yaml"
    cfg.write_text("run: {max_steps: 30}\n")
    before = files_version(cfg)
    cfg.write_text("run: {max_steps: 31}\n")
    files_version.cache_clear()
    assert files_version(cfg) != before
    assert files_version(tmp_path / "missing.yaml") != files_version(cfg)


def test_training_and_evaluation_assets_carry_their_configs_and_lower_layers():
    """The training group's code version covers medlvr.corpus (the layer below it) and the default tiny configs;
    evaluation covers corpus, training and its configs."""
    from medlvr.pipelines.definitions import CODE_VERSIONS, defs

    assert CODE_VERSIONS["training"][0][0] == "medlvr.corpus"
    assert {p.name for p in CODE_VERSIONS["training"][1]} == {"sft_tiny.yaml", "vlpo_tiny.yaml"}
    assert all(p.is_file() for _, files in CODE_VERSIONS.values() for p in files)
    versions = {k.to_user_string(): n.code_version for k, n in
                ((spec.key, spec) for spec in defs.resolve_all_asset_specs())}
    assert versions["roi_sft_checkpoint"] == versions["vlpo_checkpoint"]
    assert versions["roi_sft_checkpoint"] and "-" in versions["roi_sft_checkpoint"]
    assert versions["evaluation_report"] != versions["roi_sft_checkpoint"]
