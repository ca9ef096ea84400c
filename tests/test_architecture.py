"""The shape of the codebase: layers without upward imports or cycles (import-linter), and packaging that installs
the four folders as `medlvr.*` and nothing else at the top of site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"corpus": "medlvr.corpus", "training": "medlvr.training", "evaluation": "medlvr.evaluation",
           "pipelines": "medlvr.pipelines"}


def test_import_contracts_hold():
    """`lint-imports` with the contracts in pyproject.toml: layers corpus < training < evaluation < pipelines,
    nothing imports the command line, no import cycle between sibling modules at any depth."""
    exe = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def test_package_list_matches_the_folders():
    """pyproject's explicit `packages` list names every folder with an __init__.py (a new sub-package cannot be
    left out of a regular install) and nothing else."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"] == {v: k for k, v in FOLDERS.items()}
    found = sorted(FOLDERS[init.relative_to(ROOT).parts[0]] + "".join(
        "." + part for part in init.parent.relative_to(ROOT).parts[1:])
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py") if "__pycache__" not in init.parts)
    assert sorted(cfg["packages"]) == found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_only_the_medlvr_namespace(tmp_path):
    """A regular (non-editable) build: every module lives under medlvr/, the catalog and the SLAKE graph ship as
    package data, and the console script points at the top of the layers."""
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the source folder
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel = next(tmp_path.glob("medlvr-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"medlvr", next(t for t in tops if t.endswith(".dist-info"))}
    assert "medlvr/corpus/catalog/kits23.yaml" in names and "medlvr/corpus/kg/slake/LICENSE" in names
    assert "medlvr/pipelines/cli.py" in names and "medlvr/__init__.py" not in names  # a namespace package
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "medlvr = medlvr.pipelines.cli:main" in entry
